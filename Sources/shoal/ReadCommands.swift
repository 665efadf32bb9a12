import ArgumentParser
import Foundation
import ShoalClient
import ShoalCore
import ShoalIO
import ShoalSys

struct CatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cat", abstract: "Write an object (or a byte range of it) to standard output, read through the cache.")

    @Argument(help: "s3://bucket/key (or s3://store@bucket/key)") var url: String
    // Unconditional, so the suffix form `--range -100` is taken as the value, not as an option.
    @Option(parsing: .unconditional,
            help: ArgumentHelp("Byte range: START-END (inclusive, as HTTP: 0-99 is 100 bytes), START-, -LAST (the last LAST bytes) or START+LENGTH; units allowed (0+1MiB is the first MiB).",
                               valueName: "range"))
    var range: String?
    @OptionGroup var client: ClientOptions

    func run() throws {
        StandardStreams.ignoreSIGPIPE()
        let ref: ObjectRef
        do { ref = try ObjectRef.parse(url) } catch { throw fail(error.message, code: 2) }
        var spec: ByteRangeSpec?
        if let range {
            guard let s = ByteRangeSpec.parse(range) else { throw fail("--range '\(range)' is not START-END, START-, -LAST or START+LENGTH", code: 2) }
            spec = s
        }
        let c: ShoalClient
        do { c = try ShoalClient(config: try client.makeClientConfig()) } catch let e as ShoalError { throw fail(e.message, code: 2) }
        do {
            let file = try c.open(ref)
            if file.stale {
                note("shoal: warning: \(ref): the store is unreachable; reading the last version the worker knew (etag \(file.version.etag))")
            }
            let (offset, length) = try spec?.resolveWithinObject(size: file.size) ?? (0, file.size)
            let chunk = max(UInt64(file.blockSize) * 16, 1)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(chunk, max(length, 1))), alignment: 4096)
            defer { buffer.deallocate() }
            var position = offset
            while position < offset + length {
                let n = Int(min(UInt64(buffer.count), offset + length - position))
                let got = try c.read(file, at: position, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
                guard got > 0 else { break }
                guard StandardStreams.write(fd: 1, buffer.baseAddress!, count: got) else { return }  // reader closed the pipe
                position += UInt64(got)
            }
            if client.rdma != nil || ClientSettings.processEnvironment("SHOAL_RDMA") != nil {
                // What RDMA did, on standard error (standard output is the object's bytes).
                if let s = c.rdmaStatus {
                    let k = s.counters
                    note("shoal: rdma on \(s.device)\(s.simulated ? " (SIMULATED)" : ""): \(k.rdmaReads) reads by RDMA, \(k.fallbacks) answered over TCP after an RDMA failure, \(k.connectFailures) connections without RDMA, \(k.registrations) buffer registrations")
                } else {
                    note("shoal: rdma not used: \(c.rdmaError ?? "no connection asked for it")")
                }
            }
        } catch {
            throw fail(error.message)
        }
    }
}

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stat", abstract: "Show an object's size, etag and blocks.")

    @Argument(help: "s3://bucket/key") var url: String
    @Flag(help: "Ask the store, not the worker's metadata cache.") var revalidate = false
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        let ref: ObjectRef
        do { ref = try ObjectRef.parse(url) } catch { throw fail(error.message, code: 2) }
        do {
            let c = try ShoalClient(config: try client.makeClientConfig())
            let file = try c.stat(ref, revalidate: revalidate)
            let blocks = BlockLayout(blockSize: UInt64(file.blockSize)).blockCount(objectSize: file.size)
            if json {
                print("{\"url\":\(JSONText.quote(ref.description)),\"size\":\(file.size),\"etag\":\(JSONText.quote(file.version.etag)),"
                      + "\"blockSize\":\(file.blockSize),\"blocks\":\(blocks),\"stale\":\(file.stale)}")
            } else {
                print("\(ref)\n  size:   \(ByteSize.format(file.size)) (\(file.size) bytes)\n  etag:   \(file.version.etag)\n  blocks: \(blocks) × \(ByteSize.format(UInt64(file.blockSize)))")
                if file.stale { print("  stale:  the store is unreachable; this is the last version the worker knew") }
            }
        } catch let e as ShoalError {
            throw fail(e.message)
        }
    }
}

struct LsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the objects under a prefix (listed by a worker with its store's credentials).")

    @Argument(help: "s3://bucket/prefix (or s3://store@bucket/prefix)") var url: String
    @Flag(help: "One JSON object per line: key, size, etag (and cachedPercent with --cached).") var json = false
    @Flag(help: "With each object, the percent of its bytes cached on its blocks' owners (their indexes answer; nothing is read).")
    var cached = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        StandardStreams.ignoreSIGPIPE()
        let prefix: ObjectPrefix
        do { prefix = try ObjectPrefix.parse(url) } catch { throw fail(error.message, code: 2) }
        if cached {
            try listCached(prefix)
            return
        }
        do {
            let c = try ShoalClient(config: try client.makeClientConfig())
            var count = 0
            try c.forEachObject(store: prefix.store, bucket: prefix.bucket, prefix: prefix.prefix) { e throws(ShoalError) in
                let size = ByteSize.format(e.version.size)
                print(json ? "{\"key\":\(JSONText.quote(e.key)),\"size\":\(e.version.size),\"etag\":\(JSONText.quote(e.version.etag))}"
                           : String(repeating: " ", count: max(0, 10 - size.count)) + size + "  \(e.key)")
                count += 1
                return true
            }
            if count == 0 { throw fail("nothing under \(prefix)") }
        } catch let e as ShoalError {
            throw fail(e.message)
        }
    }

    /// The listing with each object's cached percent: a warm's check over the prefix.
    func listCached(_ prefix: ObjectPrefix) throws {
        let config = try client.makeClientConfig()
        let summary: WarmSummary
        do {
            let c = try ShoalClient(config: config)
            var options = WarmOptions()
            options.checkOnly = true
            summary = try Warmer(client: c, options: options).run([prefix]) { _ in }
        } catch {
            throw fail(error.message)
        }
        if let f = summary.listingFailures.first { throw fail(f.error.message) }
        guard !summary.objects.isEmpty else { throw fail("nothing under \(prefix)") }
        for o in summary.objects {
            let percent = o.file.size == 0 ? 100 : 100 * Double(o.bytesResident) / Double(o.file.size)
            let key = o.file.object.key
            if json {
                print("{\"key\":\(JSONText.quote(key)),\"size\":\(o.file.size),\"etag\":\(JSONText.quote(o.file.version.etag)),"
                      + "\"bytesCached\":\(o.bytesResident),\"cachedPercent\":\(formatFixed(percent, decimals: 1))"
                      + (o.failure.map { ",\"error\":\(JSONText.quote($0.message))" } ?? "") + "}")
            } else {
                let size = ByteSize.format(o.file.size)
                let cachedText = o.failure == nil ? formatFixed(percent, decimals: 0) + "%" : "?"
                print(String(repeating: " ", count: max(0, 10 - size.count)) + size
                      + String(repeating: " ", count: max(0, 6 - cachedText.count)) + cachedText + "  \(key)")
            }
        }
        let p = summary.progress
        let total = p.bytesTotal == 0 ? 100 : 100 * Double(p.bytesResident) / Double(p.bytesTotal)
        if !json {
            print("\(p.objectsTotal) objects, \(ByteSize.format(p.bytesTotal)); cached: \(ByteSize.format(p.bytesResident)) (\(formatFixed(total, decimals: 1))%)")
        }
        if let f = summary.failed.first { throw fail("\(summary.failed.count) object(s) could not be checked; the first: \(f.url): \(f.failure!.message)") }
    }
}

struct SelftestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "selftest", abstract: "Check hardware paths on this host.",
                                                    subcommands: [RDMA.self])

    struct RDMA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rdma",
            abstract: "Check RDMA: a loopback transfer, latency, bandwidth, credits and error paths on each device.",
            discussion: """
                On every RDMA device libibverbs lists (or --device), between two queue pairs of it: \
                8 MiB written and compared byte for byte, the median latency of a 64-byte write, the \
                bandwidth of 1 MiB writes kept 16 deep, the send queue never above its depth, and \
                writes with a bad rkey and past a region's end failing and stopping their queue pair; \
                and a connection through librdmacm (a peer writing into a buffer named in the handshake). \
                Exit status 3 when the host has no RDMA device (nothing verified), 1 when a check \
                fails. --simulated runs the same on the in-process simulated device instead: that \
                checks the transport's logic, never RDMA.
                """)

        @Option(help: "Only this device (default: every device).") var device: String?
        @Option(help: "The RoCEv2 GID to use, by its IPv4 address (default: the first IPv4 one).") var gidAddress: String?
        @Flag(help: "Run on the in-process SIMULATED device (no hardware; not a verification of RDMA).") var simulated = false
        @Flag(help: "One JSON document per device.") var json = false

        func validate() throws {
            if simulated && (device != nil || gidAddress != nil) {
                throw ValidationError("--device and --gid-address name a real device; --simulated uses none")
            }
        }

        func run() throws {
            var devices: [any RDMADevice] = []
            if simulated {
                devices = [SimulatedRDMADevice()]
            } else {
                let present = Verbs.devices().map(\.name)
                guard !present.isEmpty else {
                    throw fail("no RDMA device found on this host (libibverbs lists none): nothing was verified", code: 3)
                }
                if let device, !present.contains(device) {
                    throw fail("--device \(device): no such RDMA device on this host (it has: \(present.joined(separator: ", ")))", code: 2)
                }
                let names = device.map { [$0] } ?? present
                for n in names {
                    do { devices.append(try VerbsRDMADevice(name: n, gidAddress: gidAddress)) } catch {
                        throw fail("\(n): \(error)")
                    }
                }
            }
            var failed = false
            for d in devices {
                let report: RDMASelfTestReport
                do { report = try RDMASelfTest.run(d, bandwidthBytes: d.isSimulated ? 256 << 20 : 64 << 20) } catch {
                    throw fail("\(d.name): \(error)")
                }
                if !report.passed { failed = true }
                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys]
                    print(String(decoding: try encoder.encode(report), as: UTF8.self))
                    continue
                }
                print("\(report.device)\(report.simulated ? " (SIMULATED: an in-process simulation, not RDMA)" : "") gid \(report.gid)")
                print("  \(report.workRequests) RDMA WRITEs, \(ByteSize.format(UInt64(report.bytesPerWorkRequest))) each on average; "
                      + "queue depth \(report.queueDepth), at most \(report.highWater) outstanding")
                print("  latency (64 B write, median): \(formatFixed(report.latencyMicros, decimals: 1)) µs; "
                      + "bandwidth (1 MiB writes): \(ByteSize.format(UInt64(report.bandwidthBytesPerSecond)))/s")
                for c in report.checks { print("  \(c.passed ? "ok  " : "FAIL") \(c.name): \(c.detail)") }
            }
            if failed { throw ExitCode(1) }
        }
    }
}
