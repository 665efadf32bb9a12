#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalSys
import ShoalWorker

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Put a sample dataset in a store and measure reads (Perf/ drives these).",
        subcommands: [Populate.self, Read.self, Random.self, Get.self, Hold.self, EngineBench.self, ReplayBench.self, PlacementBench.self])

    /// Direct access to an S3 store, for populating and for the direct-GET baseline.
    struct StoreOptions: ParsableArguments {
        @Option(help: "An env file with SHOAL_S3_ENDPOINT, SHOAL_S3_ACCESS_KEY, SHOAL_S3_SECRET_KEY (default: those variables).")
        var storeEnv: String?

        /// Whether the store's credentials were given (a file, or the variables).
        var given: Bool { storeEnv != nil || ClientSettings.processEnvironment("SHOAL_S3_ENDPOINT") != nil }

        func makeStore() throws -> S3Store {
            var values: [String: String] = [:]
            if let storeEnv {
                do { values = try SettingsFile.readEnvFile(storeEnv, key: "--store-env") } catch { throw fail(error.message, code: 2) }
            }
            func get(_ k: String) -> String? { values[k] ?? ClientSettings.processEnvironment(k) }
            guard let endpoint = get("SHOAL_S3_ENDPOINT"), let ak = get("SHOAL_S3_ACCESS_KEY"), let sk = get("SHOAL_S3_SECRET_KEY") else {
                throw fail("store credentials missing: pass --store-env FILE or set SHOAL_S3_ENDPOINT, SHOAL_S3_ACCESS_KEY and SHOAL_S3_SECRET_KEY", code: 2)
            }
            return S3Store(name: "default", credentials: S3Credentials(endpoint: endpoint, region: get("SHOAL_S3_REGION") ?? "us-east-1",
                                                                       accessKey: ak, secretKey: sk), maxConcurrency: 64)
        }
    }

    static func parsePrefix(_ url: String) throws -> ObjectRef {
        do {
            let p = try ObjectPrefix.parse(url)
            return ObjectRef(store: p.store, bucket: p.bucket, key: p.prefix)
        } catch {
            throw fail(error.message, code: 2)
        }
    }

    static func report(_ what: String, bytes: UInt64, seconds: Double, json: Bool, extra: String = "") {
        if json {
            print("{\"what\":\"\(what)\",\"bytes\":\(bytes),\"seconds\":\(formatFixed(seconds, decimals: 4)),\"bytesPerSecond\":\(formatFixed(Double(bytes) / max(seconds, 1e-9), decimals: 0))\(extra)}")
        } else {
            print("\(what): \(ByteSize.format(bytes)) in \(formatFixed(seconds, decimals: 2)) s = \(ByteSize.formatRate(bytes: bytes, seconds: seconds))")
        }
    }

    struct Populate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a sample dataset of pseudo-random objects straight to the store.")
        @Argument(help: "s3://bucket/prefix") var url: String
        @Option(help: "Total size, e.g. 1GiB.") var size = "1GiB"
        @Option(help: "Size of each object, e.g. 64MiB.") var objectSize = "64MiB"
        @OptionGroup var store: StoreOptions

        func run() throws {
            let target = try BenchCommand.parsePrefix(url)
            guard let total = ByteSize.parse(size), let each = ByteSize.parse(objectSize), each > 0, each <= 1 << 30 else {
                throw fail("--size and --object-size must be sizes (object size at most 1 GiB)", code: 2)
            }
            let s3 = try store.makeStore()
            do throws(ShoalError) {
                try s3.createBucket(target.bucket)
                let count = Int((total + each - 1) / each)
                for i in 0..<count {
                    let key = target.key + (target.key.isEmpty || target.key.hasSuffix("/") ? "" : "/") + "part-\(String(i).leftPadded(5)).bin"
                    let n = Int(min(each, total - UInt64(i) * each))
                    try s3.put(bucket: target.bucket, key: key, bytes: SampleData.bytes(seed: UInt64(i + 1), count: n))
                }
                note("populated s3://\(target.bucket)/\(target.key): \(count) objects, \(ByteSize.format(total))")
            } catch {
                throw fail(error.message)
            }
        }
    }

    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read every object under a prefix through the cache; print the throughput.")
        @Argument(help: "s3://bucket/prefix") var url: String
        @Option(help: "Label for the printed figure.") var label = "read"
        @Option(help: "Objects read at once, each by its own thread sharing the client's connections, so one read's tail never leaves the connections idle.")
        var readers = 1
        @Option(help: "Times the whole dataset is read, one pass after another (a longer, steadier measurement).")
        var passes = 1
        @OptionGroup var reads: ReadBenchOptions

        func run() throws {
            let target = try BenchCommand.parsePrefix(url)
            guard readers >= 1 && readers <= 64 else { throw fail("--readers must be 1-64", code: 2) }
            guard passes >= 1 && passes <= 1000 else { throw fail("--passes must be 1-1000", code: 2) }
            do {
                let c = try ShoalClient(config: try reads.clientConfig())
                // Listed by the store itself where its credentials are given, else by a worker.
                let entries = reads.store.given
                    ? try reads.store.makeStore().listAll(bucket: target.bucket, prefix: target.key)
                    : try c.listAll(store: target.store, bucket: target.bucket, prefix: target.key)
                guard !entries.isEmpty else { throw fail("no objects under \(url)") }
                let queue = WorkQueue(items: Array(repeating: entries.map { ($0.key, UInt64(0), 0) }, count: passes).flatMap { $0 })
                let done = ConditionLock()
                nonisolated(unsafe) var total: UInt64 = 0
                nonisolated(unsafe) var finished = 0
                nonisolated(unsafe) var firstError: String?
                let start = monotonicNanos()
                for _ in 0..<readers {
                    try OSThread.spawn(name: "bench-read") {
                        var buffer: UnsafeMutableRawBufferPointer?
                        defer { buffer?.deallocate() }
                        var bytes: UInt64 = 0
                        do throws(ShoalError) {
                            while let (_, (key, _, _)) = queue.next() {
                                let file = try c.open(ObjectRef(store: target.store, bucket: target.bucket, key: key))
                                let chunk = Int(file.blockSize) * 16
                                if buffer == nil || buffer!.count != chunk {
                                    buffer?.deallocate()
                                    buffer = LargeBuffer.allocate(chunk)
                                }
                                var pos: UInt64 = 0
                                while pos < file.size { pos += UInt64(try c.read(file, at: pos, into: buffer!)) }
                                bytes += file.size
                            }
                        } catch {
                            done.withLock { firstError = firstError ?? error.message }
                        }
                        done.withLock {
                            total += bytes
                            finished += 1
                        }
                        done.broadcast()
                    }
                }
                done.lock()
                while finished < readers { done.wait() }
                done.unlock()
                if let firstError { throw fail(firstError) }
                let seconds = Double(monotonicNanos() - start) / 1e9
                var extra = ""
                if let r = c.rdmaStatus {
                    extra = ",\"rdmaReads\":\(r.counters.rdmaReads),\"rdmaFallbacks\":\(r.counters.fallbacks),\"rdmaRegistrations\":\(r.counters.registrations)"
                }
                BenchCommand.report(label, bytes: total, seconds: seconds, json: reads.json, extra: extra)
            } catch let e as ShoalError {
                throw fail(e.message)
            }
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Baseline: ranged GETs of every block straight from the store, N at a time.")
        @Argument(help: "s3://bucket/prefix") var url: String
        @Option(help: "GETs in flight.") var concurrency = 8
        @Option(help: "Range size, e.g. 4MiB.") var blockSize = "4MiB"
        @Option(help: ArgumentHelp("Also write each block with O_DIRECT to this new file, preallocated as a cache file is and removed at the end: the least a warm must do per block.", valueName: "file"))
        var writeTo: String?
        @Flag(help: "Print one JSON line.") var json = false
        @OptionGroup var store: StoreOptions

        func run() throws {
            let target = try BenchCommand.parsePrefix(url)
            guard let bs = ByteSize.parse(blockSize), bs > 0, concurrency >= 1, concurrency <= 256 else {
                throw fail("--block-size must be a size and --concurrency 1-256", code: 2)
            }
            // Made here and now (never an existing file, nor through a link), so removing it at the end removes only this.
            let file: FileHandle?
            do {
                file = try writeTo.map { (path) throws(SysError) -> FileHandle in try FileHandle.open(path, [.create, .exclusive, .direct]) }
            } catch {
                switch error.errno {
                case EEXIST: throw fail("--write-to \(writeTo ?? ""): the path exists; name a new file", code: 2)
                case EINVAL: throw fail("--write-to \(writeTo ?? ""): the filesystem does not take O_DIRECT (tmpfs?); name a file on a disk", code: 2)
                default: throw fail("--write-to: \(error)", code: 2)
                }
            }
            defer { if let writeTo, file != nil { FileSystem.remove(writeTo) } }
            let s3 = try store.makeStore()
            let entries: [ObjectEntry]
            do { entries = try s3.listAll(bucket: target.bucket, prefix: target.key) } catch { throw fail(error.message) }
            var work: [(String, UInt64, Int)] = []
            // Where each block lands in --write-to's file: one after another, each padded to the
            // 4 KiB that O_DIRECT writes in, as blocks are appended to a cache region.
            var offsets: [UInt64] = []
            var fileLength: UInt64 = 0
            for e in entries {
                var off: UInt64 = 0
                while off < e.version.size {
                    let n = min(bs, e.version.size - off)
                    work.append((e.key, off, Int(n)))
                    offsets.append(fileLength)
                    fileLength += Get.paged(n)
                    off += bs
                }
            }
            // Preallocated as a cache file is: its first writes go to unwritten extents, as a new cache's do.
            do { try file?.allocate(length: max(fileLength, 4096)) } catch { throw fail("--write-to: \(error)") }
            let fileOffsets = offsets
            let queue = WorkQueue(items: work)
            let done = ConditionLock()
            nonisolated(unsafe) var finished = 0
            nonisolated(unsafe) var firstError: String?
            nonisolated(unsafe) var written: UInt64 = 0
            let start = monotonicNanos()
            for _ in 0..<concurrency {
                try OSThread.spawn(name: "bench-get") {
                    let buffer = UnsafeMutableRawPointer.allocate(byteCount: Int(Get.paged(bs)), alignment: 4096)
                    defer { buffer.deallocate() }
                    var wrote: UInt64 = 0
                    while let (i, (key, off, n)) = queue.next() {
                        do throws(ShoalError) {
                            _ = try s3.get(bucket: target.bucket, key: key, offset: off, length: n, ifMatch: nil, into: buffer).count
                        } catch {
                            done.withLock { firstError = firstError ?? error.message }
                            continue
                        }
                        do throws(SysError) {
                            guard let file else { continue }
                            let count = Get.paged(UInt64(n))
                            try file.write(buffer, count: Int(count), at: fileOffsets[i])
                            wrote += count
                        } catch {
                            done.withLock { firstError = firstError ?? "--write-to: \(error)" }
                        }
                    }
                    done.withLock {
                        finished += 1
                        written += wrote
                    }
                    done.broadcast()
                }
            }
            done.lock()
            while finished < concurrency { done.wait() }
            done.unlock()
            let seconds = Double(monotonicNanos() - start) / 1e9
            if let firstError { throw fail(firstError) }
            BenchCommand.report("direct-get", bytes: entries.reduce(0) { $0 + $1.version.size }, seconds: seconds, json: json,
                                extra: ",\"concurrency\":\(concurrency),\"written\":\(written)")
        }

        /// `n` rounded up to whole 4 KiB pages, the unit O_DIRECT writes in.
        static func paged(_ n: UInt64) -> UInt64 { (n + 4095) & ~4095 }
    }
}

/// What the benchmarks that read through the cache share: the store to list, the cluster to
/// read from, JSON output, and the opt-in to a worker's `answerWithoutData` replies.
struct ReadBenchOptions: ParsableArguments {
    @Flag(help: "Count replies from a worker with --answer-without-data as answered (benchmarks only).") var acceptNoData = false
    @Flag(help: "Ask for frames without tags from a worker with --allow-untagged-frames (benchmarks only).") var untaggedFrames = false
    @Flag(help: "Print one JSON line.") var json = false
    @OptionGroup var store: BenchCommand.StoreOptions
    @OptionGroup var client: ClientOptions

    func clientConfig() throws -> ClientConfig {
        var config = try client.makeClientConfig()
        config.acceptsNoData = acceptNoData
        config.untaggedFrames = untaggedFrames
        return config
    }
}

/// Hands out work items to threads.
final class WorkQueue: @unchecked Sendable {
    private var items: [(String, UInt64, Int)]
    private var nextIndex = 0
    private let lock = ConditionLock()
    init(items: [(String, UInt64, Int)]) { self.items = items }
    /// The next item, and its place in `items`.
    func next() -> (Int, (String, UInt64, Int))? {
        lock.withLock {
            guard nextIndex < items.count else { return nil }
            defer { nextIndex += 1 }
            return (nextIndex, items[nextIndex])
        }
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
