import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTransport

extension BenchCommand {
    /// Holds many connections open to one worker, some of them reading: what a worker's memory
    /// and threads come to with them (Perf/ reads the worker's /proc while this runs).
    struct Hold: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open N authenticated connections to the first worker, keep M of them reading 4 KiB ranges, for a while.")
        @Argument(help: "s3://bucket/prefix (an object under it is read)") var url: String
        @Option(help: "Connections to open.") var connections = 1000
        @Option(help: "Of them, how many keep one 4 KiB read in flight.") var active = 100
        @Option(help: "How long to hold them once all are open.") var seconds = 3.0
        @OptionGroup var reads: ReadBenchOptions

        func run() throws {
            let target = try BenchCommand.parsePrefix(url)
            guard connections >= 1, connections <= 100_000, active >= 0, active <= connections else {
                throw fail("--connections must be 1-100000 and --active at most --connections", code: 2)
            }
            let config = try reads.clientConfig()
            do {
                let client = try ShoalClient(config: config)
                let s3 = try reads.store.makeStore()
                guard let entry = try s3.listAll(bucket: target.bucket, prefix: target.key).first(where: { $0.version.size >= 4096 }) else {
                    throw fail("no object of at least 4 KiB under \(url)")
                }
                let file = try client.open(ObjectRef(store: ObjectRef.defaultStore, bucket: target.bucket, key: entry.key))
                let worker = config.workers[0]
                var open: [WorkerConnection] = []
                let started = monotonicNanos()
                for _ in 0..<connections {
                    open.append(try WorkerConnection(endpoint: worker, secret: config.secret, clientName: "bench-hold",
                                                     timeoutMillis: config.timeoutMillis))
                }
                let openSeconds = Double(monotonicNanos() - started) / 1e9
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                defer { buffer.deallocate() }
                var rng = SplitMix(seed: 7)
                let pages = max(1, file.size / 4096)
                func send(_ c: WorkerConnection) throws(ShoalError) {
                    let offset = (rng.next() % pages) * 4096
                    guard let request = file.readRequest(at: offset, length: 4096) else { return }
                    _ = try c.sendRead(request, into: buffer, length: Int(request.length))
                }
                let readers = Array(open.prefix(active))
                for c in readers { try send(c) }
                var ops = 0
                let deadline = monotonicNanos() + UInt64(seconds * 1e9)
                while monotonicNanos() < deadline, !readers.isEmpty {
                    let ready = try TCPSocket.readable(readers.map(\.socket), timeoutMillis: 100)
                    for i in ready {
                        let (_, result) = try readers[i].receiveNext()
                        _ = try result.get()
                        ops += 1
                        try send(readers[i])
                    }
                }
                open.forEach { $0.close() }
                if reads.json {
                    print("{\"what\":\"hold\",\"connections\":\(connections),\"active\":\(active),\"openSeconds\":\(formatFixed(openSeconds, decimals: 3)),"
                          + "\"opsPerSecond\":\(formatFixed(Double(ops) / seconds, decimals: 0))}")
                } else {
                    print("held \(connections) connections (\(active) reading) for \(seconds) s: opened in \(formatFixed(openSeconds, decimals: 2)) s, "
                          + "\(formatFixed(Double(ops) / seconds, decimals: 0)) reads/s")
                }
            } catch let e as ShoalError {
                throw fail(e.message)
            } catch let e as SysError {
                throw fail("\(e)")
            }
        }
    }
}
