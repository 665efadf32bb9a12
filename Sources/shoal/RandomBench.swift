import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalSys

extension BenchCommand {
    /// Random reads of one size from every object under a prefix, by `concurrency` threads each
    /// with one read in flight (as redis-benchmark's or wrk's connections): ops/s and latency.
    struct Random: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Random reads of one size through the cache by N threads; prints ops/s and latency percentiles.")
        @Argument(help: "s3://bucket/prefix") var url: String
        @Option(help: "Size of each read, e.g. 4KiB; reads are aligned to it.") var readSize = "4KiB"
        @Option(help: "Threads, each with one read in flight.") var concurrency = 8
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
            let results = RandomResults()
            let deadline = monotonicNanos() + UInt64(seconds * 1e9)
            let start = monotonicNanos()
            for t in 0..<concurrency {
                try OSThread.spawn(name: "bench-random") {
                    var rng = SplitMix(seed: UInt64(t) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(size), alignment: 4096)
                    defer { buffer.deallocate() }
                    var latencies: [UInt64] = []
                    latencies.reserveCapacity(1 << 16)
                    var failure: String?
                    while monotonicNanos() < deadline {
                        let f = files[Int(rng.next() % UInt64(files.count))]
                        let offset = (rng.next() % (f.size / size)) * size
                        let t0 = monotonicNanos()
                        do throws(ShoalError) {
                            _ = try c.read(f, at: offset, into: buffer)
                        } catch {
                            failure = error.message
                            break
                        }
                        latencies.append(monotonicNanos() - t0)
                    }
                    results.add(latencies, failure: failure)
                }
            }
            results.wait(for: concurrency)
            let elapsed = Double(monotonicNanos() - start) / 1e9
            if let failure = results.failure { throw fail(failure) }
            var all = results.latencies
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
                print("random \(ByteSize.format(size)) reads, \(concurrency) threads: \(formatFixed(ops, decimals: 0)) ops/s "
                      + "(\(ByteSize.formatRate(bytes: UInt64(ops * Double(size)), seconds: 1))), p50 \(formatFixed(pct(0.5), decimals: 1)) µs, "
                      + "p99 \(formatFixed(pct(0.99), decimals: 1)) µs, p99.9 \(formatFixed(pct(0.999), decimals: 1)) µs")
            }
        }
    }
}

/// Latencies gathered from the bench threads.
final class RandomResults: @unchecked Sendable {
    private let lock = ConditionLock()
    private(set) var latencies: [UInt64] = []
    private(set) var failure: String?
    private var finished = 0

    func add(_ l: [UInt64], failure: String?) {
        lock.withLock {
            latencies += l
            self.failure = self.failure ?? failure
            finished += 1
        }
        lock.broadcast()
    }

    func wait(for n: Int) {
        lock.lock()
        while finished < n { lock.wait() }
        lock.unlock()
    }
}
