import ArgumentParser
import Foundation
import ShoalClient
import ShoalCore
import ShoalSys

struct WarmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warm",
        abstract: "Load datasets into the cluster before a job: each block's owner fills it from the store; no data comes to this machine.",
        discussion: """
            Lists each prefix through a worker and uses the listing's sizes and etags as the versions to warm. \
            Blocks already cached cost no store GET, so an interrupted warm run again skips what is done. \
            On a terminal: a progress bar. Otherwise (or with --json): one JSON document per line, \
            {"type":"progress",...} every --interval seconds and {"type":"summary",...} at the end (README, "Warming a dataset"). \
            Exit status 1 when any object failed or a prefix held nothing.
            """)

    @Argument(help: "s3://bucket/prefix (or s3://store@bucket/prefix); several may be given.") var urls: [String] = []
    @Option(name: .customLong("from-file"), help: "A file of URLs or prefixes, one per line (# starts a comment).") var fromFile: String?
    @Option(help: "Also warm the N prefixes read most over --since (shoal hot), e.g. yesterday's hot tables before the morning jobs.")
    var hot: Int?
    @Option(help: "With --hot: the window the reads are counted over.") var since = "24h"
    @Option(help: "Store GETs at once across the cluster (a connection to a block's owner each; at most 64 per worker).") var concurrency = 64
    @Option(help: "Cap on the bytes per second each store sends the cluster for this warm, e.g. 500MiB (blocks already cached do not count).")
    var bandwidth: String?
    @Flag(help: "Report what fraction of the dataset is cached; fetch nothing.") var check = false
    @Flag(help: "Pin what is warmed (kept through eviction; see shoal pin), on every worker given by --admin.") var pin = false
    @Option(help: "With --pin: unpin by itself after this long, e.g. 12h.") var ttl: String?
    @Option(help: "Write what was warmed (URL, size, etag of each object) to this manifest file; with --diff, the manifest to compare the store with.")
    var manifest: String?
    @Flag(help: "With --manifest: list what changed in the store since the manifest was written (added, removed, changed); fetch nothing.")
    var diff = false
    @Flag(help: "JSON lines even on a terminal.") var json = false
    @Option(help: "Seconds between progress reports.") var interval = 1.0
    @Option(name: .customLong("admin"), help: "With --pin: a worker's admin host:port (repeat; default: $SHOAL_ADMINS).") var admins: [String] = []
    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard (1...4096).contains(concurrency) else { throw ValidationError("--concurrency must be 1-4096, not \(concurrency)") }
        guard interval > 0 else { throw ValidationError("--interval must be more than 0") }
        if check && pin { throw ValidationError("--check fetches nothing, so there is nothing to --pin") }
        if ttl != nil && !pin { throw ValidationError("--ttl goes with --pin") }
        if diff && manifest == nil { throw ValidationError("--diff needs --manifest FILE (the manifest to compare the store with)") }
        if diff && (check || pin) { throw ValidationError("--diff only compares; it goes with neither --check nor --pin") }
        if let hot, !(1...1000).contains(hot) { throw ValidationError("--hot must be 1-1000, not \(hot)") }
    }

    func run() throws {
        StandardStreams.ignoreSIGPIPE()
        var options = WarmOptions()
        options.concurrency = concurrency
        options.checkOnly = check
        if let bandwidth {
            guard let rate = ByteSize.parse(bandwidth), rate > 0 else { throw fail("--bandwidth '\(bandwidth)' is not a size per second, e.g. 500MiB", code: 2) }
            options.bytesPerSecondPerStore = rate
        }
        var config = try client.makeClientConfig()
        // Probes (--check, --bandwidth) go over a few connections per worker, pipelined deep; fills
        // over `concurrency` warm lanes across the cluster (`ShoalClient.warm`).
        config.connectionsPerWorker = min(4, concurrency)
        config.pipelineDepth = max(1, min(Int(WireLimits.maxInFlight), concurrency))
        let c: ShoalClient
        do { c = try ShoalClient(config: config) } catch { throw fail(error.message, code: 2) }
        let output = WarmOutput(json: json || !StandardStreams.stdoutIsTerminal, interval: interval, check: check)
        if diff, let manifest {
            try runDiff(c, manifest: manifest, output: output)
            return
        }
        let prefixes = try targets()
        if pin {
            if let ttl, DurationText.parseSeconds(ttl) == nil { throw fail("--ttl '\(ttl)' is not a duration (e.g. 12h)", code: 2) }
            // Before the fills: a block is pinned as it is written.
            var admin = AdminOptions()
            admin.admins = admins
            admin.secretFile = client.secretFile
            for p in prefixes {
                try admin.send("POST", "/pins?prefix=\(PercentEncoding.encode(p.description))" + (ttl.map { "&ttl=\(PercentEncoding.encode($0))" } ?? ""),
                               quiet: output.json)
            }
        }
        let summary: WarmSummary
        do {
            summary = try Warmer(client: c, options: options).run(prefixes) { output.progress($0) }
        } catch {
            throw fail(error.message)
        }
        output.summary(summary)
        if output.json {
            // The JSON is for programs; what went wrong is said to people too.
            for e in summary.emptyPrefixes { note("shoal: error: nothing under \(e)") }
            for f in summary.listingFailures { note("shoal: error: \(f.error.message)") }
            let failed = summary.failed
            if let first = failed.first {
                note("shoal: error: \(failed.count) object(s) failed; the first: \(first.url): \(first.failure!.message)")
            }
        }
        if let manifest, !check {
            let m = Manifest(prefixes: prefixes, objects: summary.objects.filter { $0.failure == nil }.map {
                Manifest.Entry(url: $0.file.object.description, size: $0.file.size, etag: $0.file.version.etag)
            })
            do { try m.write(to: manifest, created: ISO8601DateFormatter().string(from: Date())) } catch {
                throw fail("cannot write the manifest \(manifest): \(error)")
            }
        }
        if !summary.succeeded { throw ExitCode(1) }
    }

    /// The prefixes named on the command line and in --from-file.
    func targets() throws -> [ObjectPrefix] {
        var list = urls
        if let hot {
            let rows = try HotQuery.hottest(admins: admins, since: since, limit: hot)
            if rows.isEmpty { note("shoal: warning: no prefix was read in the last \(since); --hot adds none") }
            for r in rows { note("shoal: hot: \(r.prefix) (\(r.reads) reads in the last \(since))") }
            list += rows.map(\.prefix)
        }
        if let fromFile {
            let text: String
            do { text = String(decoding: try FileSystem.readFile(fromFile), as: UTF8.self) } catch { throw fail("--from-file \(fromFile): \(error)", code: 2) }
            for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
                let t = String(line).trimmingCharacters()
                if !t.isEmpty && !t.hasPrefix("#") { list.append(t) }
            }
        }
        guard !list.isEmpty else { throw fail("nothing to warm: give s3://bucket/prefix arguments, --from-file FILE or --hot N", code: 2) }
        var out: [ObjectPrefix] = []
        for url in list {
            do { out.append(try ObjectPrefix.parse(url)) } catch { throw fail(error.message, code: 2) }
        }
        return out
    }

    /// Compares the store now with the manifest: what was added, removed or changed.
    func runDiff(_ c: ShoalClient, manifest path: String, output: WarmOutput) throws {
        let m: Manifest
        do { m = try Manifest.read(path) } catch { throw fail(error.message, code: 2) }
        var now: [String: ObjectVersion] = [:]
        do {
            for p in m.prefixes {
                try c.forEachObject(store: p.store, bucket: p.bucket, prefix: p.prefix) { e throws(ShoalError) in
                    now[ObjectRef(store: p.store, bucket: p.bucket, key: e.key).description] = e.version
                    return true
                }
            }
        } catch {
            throw fail(error.message)
        }
        var changes: [ManifestChange] = []
        let was = Dictionary(m.objects.map { ($0.url, $0) }, uniquingKeysWith: { a, _ in a })
        for o in m.objects {
            guard let v = now[o.url] else {
                changes.append(ManifestChange(change: "removed", url: o.url, size: nil, etag: nil, was: ManifestEntryDocument(o)))
                continue
            }
            if v.etag != o.etag || v.size != o.size { changes.append(ManifestChange(change: "changed", url: o.url, size: v.size, etag: v.etag, was: ManifestEntryDocument(o))) }
        }
        for (url, v) in now.sorted(by: { $0.key < $1.key }) where was[url] == nil {
            changes.append(ManifestChange(change: "added", url: url, size: v.size, etag: v.etag, was: nil))
        }
        output.diff(changes, manifestObjects: m.objects.count)
        if !changes.isEmpty { throw ExitCode(1) }
    }
}

/// One difference between a manifest and the store now.
struct ManifestChange: Codable {
    var type = "change"
    var change: String
    var url: String
    var size: UInt64?
    var etag: String?
    var was: ManifestEntryDocument?
}

struct ManifestEntryDocument: Codable {
    var url: String
    var size: UInt64
    var etag: String

    init(_ e: Manifest.Entry) {
        url = e.url
        size = e.size
        etag = e.etag
    }
}

/// How a warm reports: a progress bar and a summary for people, or JSON lines for programs.
final class WarmOutput {
    let json: Bool
    let intervalNanos: UInt64
    let check: Bool
    private var lastReport: UInt64 = 0
    private let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    init(json: Bool, interval: Double, check: Bool) {
        self.json = json
        intervalNanos = UInt64(interval * 1e9)
        self.check = check
    }

    func emit<T: Encodable>(_ value: T) {
        guard let data = try? encoder.encode(value) else { return }
        write(String(decoding: data, as: UTF8.self) + "\n")
    }

    func write(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { StandardStreams.write(fd: 1, $0.baseAddress!, count: $0.count) }
    }

    /// A progress report, at most one per interval.
    func progress(_ p: WarmProgress) {
        let now = monotonicNanos()
        guard elapsedNanos(from: lastReport, to: now) >= intervalNanos else { return }
        lastReport = now
        if json {
            emit(ProgressDocument(p))
        } else {
            write("\r\u{1B}[K" + WarmOutput.bar(p, check: check))
        }
    }

    /// `[#####.....]  45%  1234/5000 objects  1.2 GiB/4.0 GiB  300 MB/s  ETA 12s  0 failed`
    static func bar(_ p: WarmProgress, check: Bool) -> String {
        if p.listing { return "listing: \(p.objectsTotal) objects, \(ByteSize.format(p.bytesTotal))" }
        let fraction = p.bytesTotal > 0 ? Double(p.bytesDone) / Double(p.bytesTotal) : (p.objectsTotal > 0 ? Double(p.objectsDone) / Double(p.objectsTotal) : 1)
        let width = 24
        let filled = min(width, Int(fraction * Double(width)))
        var s = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
        s += "\(Int(fraction * 100))%  \(p.objectsDone)/\(p.objectsTotal) objects  \(ByteSize.format(p.bytesDone))/\(ByteSize.format(p.bytesTotal))"
        s += "  " + ByteSize.formatRate(bytes: p.bytesDone, seconds: p.seconds)
        if let eta = p.etaSeconds { s += "  ETA " + WarmOutput.duration(eta) }
        if check { s += "  \(ByteSize.format(p.bytesResident)) cached" }
        s += "  \(p.objectsFailed) failed"
        return s
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.up))
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
    }

    func summary(_ s: WarmSummary) {
        let doc = SummaryDocument(s, check: check)
        if json {
            emit(doc)
            return
        }
        let p = s.progress
        var lines = ["\r\u{1B}[K" + WarmOutput.bar(p, check: check)]
        if check {
            let percent = p.bytesTotal > 0 ? 100 * Double(p.bytesResident) / Double(p.bytesTotal) : 100
            lines.append("cached: \(p.objectsResident) of \(p.objectsTotal) objects whole, \(ByteSize.format(p.bytesResident)) of \(ByteSize.format(p.bytesTotal)) (\(formatFixed(percent, decimals: 1))%)")
        } else {
            lines.append("newly cached:   \(p.objectsNewlyCached) objects, \(ByteSize.format(p.bytesNewlyCached)) (\(p.blocksFromStore) blocks from the store, \(p.blocksFromPeers) from previous owners)")
            lines.append("already cached: \(p.objectsAlreadyCached) objects, \(ByteSize.format(p.bytesAlreadyCached))")
        }
        lines.append("failed:         \(p.objectsFailed) objects" + (p.retries > 0 ? " (\(p.retries) block requests tried again)" : ""))
        for o in doc.failed.prefix(20) { lines.append("  \(o.url): \(o.error)") }
        if doc.failed.count > 20 { lines.append("  … and \(doc.failed.count - 20) more (--json lists them all)") }
        for e in s.emptyPrefixes { lines.append("nothing under \(e)") }
        for f in s.listingFailures { lines.append(f.error.message) }
        lines.append("in \(WarmOutput.duration(p.seconds)); this process received \(ByteSize.format(doc.bytesReceivedHere)) in all")
        write(lines.joined(separator: "\n") + "\n")
    }

    func diff(_ changes: [ManifestChange], manifestObjects: Int) {
        if json {
            for c in changes { emit(c) }
            emit(DiffSummary(objects: manifestObjects, added: changes.filter { $0.change == "added" }.count,
                             removed: changes.filter { $0.change == "removed" }.count, changed: changes.filter { $0.change == "changed" }.count))
            return
        }
        for c in changes { write("\(c.change.padding(toLength: 8, withPad: " ", startingAt: 0)) \(c.url)\n") }
        write(changes.isEmpty ? "no change since the manifest (\(manifestObjects) objects)\n" : "\(changes.count) changes since the manifest (\(manifestObjects) objects)\n")
    }

    struct DiffSummary: Codable {
        var type = "summary"
        var objects: Int
        var added: Int
        var removed: Int
        var changed: Int
    }

    struct ProgressDocument: Codable {
        var type = "progress"
        var listing: Bool
        var objects: Int
        var objectsTotal: Int
        var bytes: UInt64
        var bytesTotal: UInt64
        var bytesPerSecond: Double
        var etaSeconds: Double?
        var failed: Int
        var bytesCached: UInt64
        var seconds: Double

        init(_ p: WarmProgress) {
            listing = p.listing
            objects = p.objectsDone
            objectsTotal = p.objectsTotal
            bytes = p.bytesDone
            bytesTotal = p.bytesTotal
            bytesPerSecond = p.bytesPerSecond.rounded()
            etaSeconds = p.etaSeconds.map { ($0 * 10).rounded() / 10 }
            failed = p.objectsFailed
            bytesCached = p.bytesResident
            seconds = (p.seconds * 1000).rounded() / 1000
        }
    }

    struct Count: Codable {
        var objects: Int
        var bytes: UInt64
    }

    struct Failure: Codable {
        var url: String
        var code: String
        var error: String
    }

    struct SummaryDocument: Codable {
        var type = "summary"
        var check: Bool
        var objects: Int
        var bytes: UInt64
        var newlyCached: Count?
        var alreadyCached: Count?
        /// A check: objects cached whole, and bytes of cached blocks.
        var cached: Count?
        var cachedPercent: Double?
        var failed: [Failure]
        var emptyPrefixes: [String]
        var blocksFromStore: Int
        var blocksFromPeers: Int
        var retries: Int
        var seconds: Double
        /// Of `seconds`, those the listing took.
        var listingSeconds: Double
        var bytesPerSecond: Double
        /// Bytes this process read from sockets and files (/proc/self/io): a warm's data stays
        /// on the workers, so this is requests' answers and listings.
        var bytesReceivedHere: UInt64

        init(_ s: WarmSummary, check: Bool) {
            let p = s.progress
            self.check = check
            objects = p.objectsTotal
            bytes = p.bytesTotal
            if check {
                cached = Count(objects: p.objectsResident, bytes: p.bytesResident)
                cachedPercent = p.bytesTotal > 0 ? (10000 * Double(p.bytesResident) / Double(p.bytesTotal)).rounded() / 100 : 100
            } else {
                newlyCached = Count(objects: p.objectsNewlyCached, bytes: p.bytesNewlyCached)
                alreadyCached = Count(objects: p.objectsAlreadyCached, bytes: p.bytesAlreadyCached)
            }
            failed = s.failed.map { Failure(url: $0.url, code: $0.failure!.code.label, error: $0.failure!.message) }
                + s.listingFailures.map { Failure(url: $0.prefix.description, code: $0.error.code.label, error: $0.error.message) }
            emptyPrefixes = s.emptyPrefixes.map(\.description)
            blocksFromStore = p.blocksFromStore
            blocksFromPeers = p.blocksFromPeers
            retries = p.retries
            seconds = (p.seconds * 1000).rounded() / 1000
            listingSeconds = (p.listingSeconds * 1000).rounded() / 1000
            bytesPerSecond = p.bytesPerSecond.rounded()
            bytesReceivedHere = ProcessIO.bytesRead() ?? 0
        }
    }
}
