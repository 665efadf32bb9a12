import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTransport

extension BenchCommand {
    /// Random reads of one size from every object under a prefix, `concurrency` of them in flight
    /// on as many connections from one thread (as redis-benchmark's client keeps its
    /// connections): ops/s and latency. A read that would cross a block reads to the block's end.
    struct Random: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Random reads of one size through the cache, N in flight on N connections; prints ops/s and latency percentiles.")
        @Argument(help: "s3://bucket/prefix") var url: String
        @Option(help: "Size of each read, e.g. 4KiB; reads are aligned to it.") var readSize = "4KiB"
        @Option(help: "Reads in flight, one per connection.") var concurrency = 8
        @Option(help: "How long to read.") var seconds = 3.0
        @OptionGroup var reads: ReadBenchOptions

        func run() throws {
            let target = try BenchCommand.parsePrefix(url)
            guard let size = ByteSize.parse(readSize), size > 0, size <= 64 << 20 else {
                throw fail("--read-size '\(readSize)' is not a size from 1 B to 64 MiB (e.g. 4KiB)", code: 2)
            }
            guard concurrency >= 1, concurrency <= 256 else { throw fail("--concurrency must be 1-256, not \(concurrency)", code: 2) }
            guard seconds > 0, seconds.isFinite else { throw fail("--seconds must be a positive number", code: 2) }
            var config = try reads.clientConfig()
            config.connectionsPerWorker = max(config.connectionsPerWorker, concurrency)
            let files: [ShoalFile]
            let c: ShoalClient
            do {
                let s3 = try reads.store.makeStore()
                c = try ShoalClient(config: config)
                files = try s3.listAll(bucket: target.bucket, prefix: target.key).filter { $0.version.size >= size }.map { e throws(ShoalError) in
                    try c.open(ObjectRef(store: ObjectRef.defaultStore, bucket: target.bucket, key: e.key))
                }
            } catch let e as ShoalError {
                throw fail(e.message)
            }
            guard !files.isEmpty else { throw fail("no object under \(url) holds \(readSize)") }
            // One thread keeps `concurrency` reads in flight, one per connection, and polls them,
            // as redis-benchmark's client does: no thread per read, one receive per reply.
            var lanes: [[Endpoint: WorkerConnection]] = Array(repeating: [:], count: concurrency)
            var current: [(WorkerConnection, UInt64)?] = Array(repeating: nil, count: concurrency)
            let buffers = (0..<concurrency).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: Int(size), alignment: 4096) }
            defer { buffers.forEach { $0.deallocate() } }
            var rng = SplitMix(seed: 0x9E37_79B9_7F4A_7C15)
            var tls: TLSContext?
            if let ca = config.tlsCAFile {
                do { tls = try TLSContext.client(caFile: ca) } catch { throw fail(error.message) }
            }
            var latencies: [UInt64] = []
            latencies.reserveCapacity(1 << 20)
            func issue(_ lane: Int) throws(ShoalError) {
                let i = Int(rng.next() % UInt64(files.count))
                let f = files[i]
                let offset = (rng.next() % (f.size / size)) * size
                // A read that would cross a block reads to the block's end.
                guard let request = f.readRequest(at: offset, length: size) else { return }
                guard let owner = c.owners(of: request.block).first else { throw ShoalError(.internal, "no worker owns \(request.block)") }
                let connection: WorkerConnection
                if let existing = lanes[lane][owner] {
                    connection = existing
                } else {
                    connection = try WorkerConnection(endpoint: owner, secret: config.secret, clientName: "bench-random",
                                                      timeoutMillis: config.timeoutMillis, tls: tls, untaggedFrames: config.untaggedFrames)
                    connection.acceptsNoData = config.acceptsNoData
                    lanes[lane][owner] = connection
                }
                _ = try connection.sendRead(request, into: buffers[lane].baseAddress!, length: Int(request.length))
                current[lane] = (connection, monotonicNanos())
            }
            let deadline = monotonicNanos() + UInt64(seconds * 1e9)
            let start = monotonicNanos()
            do throws(ShoalError) {
                for lane in 0..<concurrency { try issue(lane) }
                while monotonicNanos() < deadline {
                    let busy = (0..<concurrency).filter { current[$0] != nil }
                    let buffered = busy.filter { current[$0]!.0.hasBufferedReply }
                    var ready = buffered
                    if ready.isEmpty {
                        do {
                            ready = try TCPSocket.readable(busy.map { current[$0]!.0.socket }, timeoutMillis: 1000).map { busy[$0] }
                        } catch {
                            throw ShoalError(.connectionFailed, "poll failed: \(error)")
                        }
                    }
                    for lane in ready {
                        let (connection, sentAt) = current[lane]!
                        let (_, result) = try connection.receiveNext()
                        _ = try result.get()
                        latencies.append(monotonicNanos() - sentAt)
                        try issue(lane)
                    }
                }
            } catch {
                throw fail(error.message)
            }
            let elapsed = Double(monotonicNanos() - start) / 1e9
            lanes.forEach { $0.values.forEach { $0.close() } }
            var all = latencies
            all.sort()
            guard !all.isEmpty else { throw fail("no read finished in \(seconds) s") }
            func pct(_ q: Double) -> Double { Double(all[min(all.count - 1, Int(Double(all.count) * q))]) / 1000 }
            let ops = Double(all.count) / elapsed
            if reads.json {
                print("{\"what\":\"random\",\"readSize\":\(size),\"concurrency\":\(concurrency),\"ops\":\(all.count),"
                      + "\"seconds\":\(formatFixed(elapsed, decimals: 3)),\"opsPerSecond\":\(formatFixed(ops, decimals: 0)),"
                      + "\"bytesPerSecond\":\(formatFixed(ops * Double(size), decimals: 0)),\"p50Micros\":\(formatFixed(pct(0.5), decimals: 1)),"
                      + "\"p99Micros\":\(formatFixed(pct(0.99), decimals: 1)),\"p999Micros\":\(formatFixed(pct(0.999), decimals: 1))}")
            } else {
                print("random \(ByteSize.format(size)) reads, \(concurrency) in flight: \(formatFixed(ops, decimals: 0)) ops/s "
                      + "(\(ByteSize.formatRate(bytes: UInt64(ops * Double(size)), seconds: 1))), p50 \(formatFixed(pct(0.5), decimals: 1)) µs, "
                      + "p99 \(formatFixed(pct(0.99), decimals: 1)) µs, p99.9 \(formatFixed(pct(0.999), decimals: 1)) µs")
            }
        }
    }
}
