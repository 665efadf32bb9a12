import ArgumentParser
import Foundation
import ShoalClient
import ShoalCore
import ShoalSys

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "A live view of the cluster, refreshed every second: per worker throughput, hit ratio, fills, disk use and health; per dataset what is cached.",
        discussion: """
            Reads each worker's admin port (/status and /metrics; --admin or $SHOAL_ADMINS). Rates are over the refresh \
            interval. A dataset is a bucket's first path component (s3://bucket/imagenet/); its size, for the cached \
            percent, comes from listing it through the cluster (when client settings are given), once a minute. \
            --json prints one snapshot (two samples --interval apart, for the rates) and exits.
            """)

    @Flag(help: "Print one JSON snapshot and exit.") var json = false
    @Option(help: "Seconds between refreshes (and between the two samples of --json).") var interval = 1.0
    @Option(name: .customLong("admin"), help: "A worker's admin host:port (repeat; default: $SHOAL_ADMINS).") var admins: [String] = []
    @Flag(help: "Do not list datasets for their sizes (no cached percent).") var noSizes = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard interval >= 0.1 else { throw ValidationError("--interval must be at least 0.1 s") }
    }

    func run() throws {
        StandardStreams.ignoreSIGPIPE()
        var admin = AdminOptions()
        admin.admins = admins
        let endpoints = try admin.endpoints()
        let sizes = DatasetSizes(client: noSizes ? nil : try? ShoalClient(config: try client.makeClientConfig()))
        var previous = ClusterSample.take(endpoints)
        if json {
            sleepNanos(UInt64(interval * 1e9))
            let now = ClusterSample.take(endpoints)
            sizes.refresh(now.datasetNames, wait: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(StatsSnapshot(now, previous, sizes: sizes.known))
            print(String(decoding: data, as: UTF8.self))
            return
        }
        while true {
            sleepNanos(UInt64(interval * 1e9))
            let now = ClusterSample.take(endpoints)
            sizes.refresh(now.datasetNames, wait: false)
            let view = StatsSnapshot(now, previous, sizes: sizes.known).rendered()
            let text = "\u{1B}[H\u{1B}[2J" + view
            let bytes = Array(text.utf8)
            guard bytes.withUnsafeBytes({ StandardStreams.write(fd: 1, $0.baseAddress!, count: $0.count) }) else { return }
            previous = now
        }
    }
}

/// What one worker's admin port said at one moment.
struct WorkerSample {
    var address: String
    var error: String?
    var at: UInt64
    /// Counters from /metrics, summed over labels, by name.
    var counters: [String: Double] = [:]
    var status: [String: Any] = [:]

    func counter(_ name: String) -> Double { counters[name] ?? 0 }
    var datasets: [[String: Any]] { status["datasets"] as? [[String: Any]] ?? [] }
    func number(_ key: String) -> Double { (status[key] as? NSNumber)?.doubleValue ?? 0 }
}

struct ClusterSample {
    var workers: [WorkerSample]

    static func take(_ endpoints: [Endpoint]) -> ClusterSample {
        ClusterSample(workers: endpoints.map { e in
            var s = WorkerSample(address: e.description, at: monotonicNanos())
            do {
                let metrics = try get(e, "/metrics")
                s.counters = parseMetrics(metrics)
                let status = try get(e, "/status")
                guard let parsed = try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any] else {
                    throw ShoalError(.internal, "/status is not a JSON object (\(status.utf8.count) bytes, ending \(String(status.suffix(80)).debugDescription))")
                }
                s.status = parsed
            } catch {
                s.error = "\(error)"
            }
            return s
        })
    }

    var datasetNames: [String] { Array(Set(workers.flatMap { $0.datasets.compactMap { $0["dataset"] as? String } })).sorted() }

    static func get(_ e: Endpoint, _ path: String) throws -> String {
        let easy = try CurlEasy()
        let sink = HTTPBodySink(limit: 16 << 20)
        let r = try easy.perform(HTTPRequest(method: "GET", url: "http://\(e)\(path)"), sink: sink)
        guard r.status == 200 else { throw ShoalError(.storeUnavailable, "\(path): HTTP \(r.status)") }
        guard !sink.overflowed else { throw ShoalError(.tooLarge, "\(path): more than 16 MiB") }
        return String(decoding: sink.bytes, as: UTF8.self)
    }

    /// Prometheus text: `name{labels} value` lines, summed by name.
    static func parseMetrics(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let name = line[..<space].split(separator: "{", maxSplits: 1).first.map(String.init) ?? ""
            out[name, default: 0] += value
        }
        return out
    }
}

/// Dataset sizes from listing them through the cluster, at most once a minute each, in the
/// background (a top-like view never waits on a listing).
final class DatasetSizes: @unchecked Sendable {
    private let client: ShoalClient?
    private let lock = ConditionLock()
    private var sizes: [String: UInt64] = [:]
    private var listedAt: [String: UInt64] = [:]
    private var running = false

    init(client: ShoalClient?) { self.client = client }

    var known: [String: UInt64] { lock.withLock { sizes } }

    func refresh(_ names: [String], wait: Bool) {
        guard let client else { return }
        let now = monotonicNanos()
        let due: [String] = lock.withLock {
            guard !running else { return [] }
            let d = names.filter { n in listedAt[n].map { elapsedNanos(from: $0, to: now) > 60_000_000_000 } ?? true }
            if !d.isEmpty { running = true }
            return d
        }
        guard !due.isEmpty else { return }
        let work: @Sendable () -> Void = { [self] in
            for name in due {
                guard let p = try? ObjectPrefix.parse(name) else { continue }
                var total: UInt64 = 0
                var ok = true
                do {
                    try client.forEachObject(store: p.store, bucket: p.bucket, prefix: p.prefix) { e throws(ShoalError) in
                        total += e.version.size
                        return true
                    }
                } catch {
                    ok = false
                }
                lock.withLock {
                    if ok { sizes[name] = total }
                    listedAt[name] = monotonicNanos()
                }
            }
            lock.withLock { running = false }
        }
        if wait { work() } else { _ = try? OSThread.spawn(name: "shoal-stats-sizes", work) }
    }
}

/// One view of the cluster: per worker and per dataset, with rates between two samples.
struct StatsSnapshot: Encodable {
    struct Worker: Encodable {
        var address: String
        var up: Bool
        var error: String?
        var bytesServedPerSecond: Double
        var readsPerSecond: Double
        var hitRatio: Double
        var fillsPerSecond: Double
        var bytesFilledPerSecond: Double
        var bytesCached: UInt64
        var capacity: UInt64
        var disksInService: Int
        var disks: Int
        var connections: Int
        /// The counters as /metrics gave them.
        var bytesServedTotal: UInt64
        var hitsTotal: UInt64
        var missesTotal: UInt64
        var fillsTotal: UInt64
        var bytesFilledTotal: UInt64
        /// READ data RDMA-written into clients' memory (per second, and the counters), and READs
        /// asked by RDMA and answered over TCP because the RDMA path failed.
        var rdmaBytesPerSecond: Double
        var rdmaBytesTotal: UInt64
        var rdmaWritesTotal: UInt64
        var rdmaFallbacksTotal: UInt64
    }

    struct Dataset: Encodable {
        var dataset: String
        var bytesCached: UInt64
        var size: UInt64?
        var cachedPercent: Double?
        var hits: UInt64
        var misses: UInt64
        var hitRatio: Double
        var bytesServed: UInt64
    }

    var workers: [Worker]
    var datasets: [Dataset]
    var seconds: Double

    init(_ now: ClusterSample, _ before: ClusterSample, sizes: [String: UInt64]) {
        var ds: [String: Dataset] = [:]
        workers = now.workers.map { w in
            let prior = before.workers.first { $0.address == w.address && $0.error == nil }
            let dt = prior.map { Double(elapsedNanos(from: $0.at, to: w.at)) / 1e9 } ?? 0
            func rate(_ name: String) -> Double {
                guard let prior, dt > 0 else { return 0 }
                return max(0, (w.counter(name) - prior.counter(name)) / dt).rounded()
            }
            let hits = w.counter("shoal_hits_total"), misses = w.counter("shoal_misses_total")
            let disks = w.status["disks"] as? [[String: Any]] ?? []
            for d in w.datasets {
                guard let name = d["dataset"] as? String else { continue }
                var row = ds[name] ?? Dataset(dataset: name, bytesCached: 0, hits: 0, misses: 0, hitRatio: 0, bytesServed: 0)
                row.bytesCached += (d["bytesCached"] as? NSNumber)?.uint64Value ?? 0
                row.hits += (d["hits"] as? NSNumber)?.uint64Value ?? 0
                row.misses += (d["misses"] as? NSNumber)?.uint64Value ?? 0
                row.bytesServed += (d["bytesServed"] as? NSNumber)?.uint64Value ?? 0
                ds[name] = row
            }
            return Worker(address: w.address, up: w.error == nil, error: w.error,
                          bytesServedPerSecond: rate("shoal_bytes_served_total"),
                          readsPerSecond: rate("shoal_hits_total") + rate("shoal_misses_total"),
                          hitRatio: hits + misses > 0 ? (10000 * hits / (hits + misses)).rounded() / 10000 : 0,
                          fillsPerSecond: rate("shoal_fills_total"), bytesFilledPerSecond: rate("shoal_bytes_filled_total"),
                          bytesCached: UInt64(w.number("bytesCached")), capacity: UInt64(w.number("capacity")),
                          disksInService: disks.filter { ($0["inService"] as? Bool) == true }.count, disks: disks.count,
                          connections: Int(w.number("connections")),
                          bytesServedTotal: UInt64(w.counter("shoal_bytes_served_total")), hitsTotal: UInt64(hits), missesTotal: UInt64(misses),
                          fillsTotal: UInt64(w.counter("shoal_fills_total")), bytesFilledTotal: UInt64(w.counter("shoal_bytes_filled_total")),
                          rdmaBytesPerSecond: rate("shoal_rdma_bytes_total"), rdmaBytesTotal: UInt64(w.counter("shoal_rdma_bytes_total")),
                          rdmaWritesTotal: UInt64(w.counter("shoal_rdma_writes_total")), rdmaFallbacksTotal: UInt64(w.counter("shoal_rdma_fallbacks_total")))
        }
        datasets = ds.values.map { d in
            var d = d
            d.hitRatio = d.hits + d.misses > 0 ? (10000 * Double(d.hits) / Double(d.hits + d.misses)).rounded() / 10000 : 0
            if let size = sizes[d.dataset] {
                d.size = size
                d.cachedPercent = size > 0 ? min(100, (10000 * Double(d.bytesCached) / Double(size)).rounded() / 100) : 100
            }
            return d
        }.sorted { $0.bytesCached > $1.bytesCached }
        seconds = zip(now.workers, before.workers).map { Double(elapsedNanos(from: $1.at, to: $0.at)) / 1e9 }.max() ?? 0
    }

    /// The terminal view: human units, one line per worker and per dataset.
    func rendered() -> String {
        func pad(_ s: String, _ n: Int, right: Bool = true) -> String {
            let fill = String(repeating: " ", count: max(0, n - s.count))
            return right ? fill + s : s + fill
        }
        func rate(_ bytes: Double) -> String { ByteSize.formatRate(bytes: UInt64(bytes), seconds: 1) }
        var lines = ["shoal stats — \(workers.filter(\.up).count) of \(workers.count) workers up", ""]
        lines.append(pad("worker", 22, right: false) + pad("served", 12) + pad("by RDMA", 12) + pad("reads/s", 9) + pad("hit", 7) + pad("fills/s", 9)
                     + pad("filled", 12) + pad("cached", 12) + pad("of", 10) + pad("disks", 7) + "  health")
        for w in workers {
            guard w.up else {
                lines.append(pad(w.address, 22, right: false) + "  down: \(w.error ?? "no answer")")
                continue
            }
            var health = w.disksInService == w.disks ? "ok" : "\(w.disks - w.disksInService) disk(s) out"
            if w.rdmaFallbacksTotal > 0 { health += ", \(w.rdmaFallbacksTotal) RDMA fallback(s) to TCP" }
            lines.append(pad(w.address, 22, right: false) + pad(rate(w.bytesServedPerSecond), 12) + pad(rate(w.rdmaBytesPerSecond), 12)
                         + pad(formatFixed(w.readsPerSecond, decimals: 0), 9)
                         + pad(formatFixed(100 * w.hitRatio, decimals: 1) + "%", 7) + pad(formatFixed(w.fillsPerSecond, decimals: 0), 9)
                         + pad(rate(w.bytesFilledPerSecond), 12) + pad(ByteSize.format(w.bytesCached), 12) + pad(ByteSize.format(w.capacity), 10)
                         + pad("\(w.disksInService)/\(w.disks)", 7) + "  " + health)
        }
        lines.append("")
        lines.append(pad("dataset", 40, right: false) + pad("cached", 12) + pad("of", 12) + pad("cached%", 9) + pad("hit", 8) + pad("served", 12))
        for d in datasets.prefix(30) {
            lines.append(pad(d.dataset, 40, right: false) + pad(ByteSize.format(d.bytesCached), 12) + pad(d.size.map(ByteSize.format) ?? "?", 12)
                         + pad(d.cachedPercent.map { formatFixed($0, decimals: 1) + "%" } ?? "?", 9)
                         + pad(formatFixed(100 * d.hitRatio, decimals: 1) + "%", 8) + pad(ByteSize.format(d.bytesServed), 12))
        }
        if datasets.count > 30 { lines.append("… \(datasets.count - 30) more (--json lists them all)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
