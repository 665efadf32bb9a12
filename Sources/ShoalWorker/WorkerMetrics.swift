import Metrics
import Prometheus
import ShoalCore
import ShoalStore
import ShoalSys

/// The worker's metrics, created once and kept (never looked up on the hot path). Each worker has
/// its own Prometheus registry, so several workers in one process (tests) do not mix counts.
public final class WorkerMetrics: @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    /// Block reads served without a store GET of their own: from the cache, or from the bytes of
    /// another reader's fill they waited on.
    let hits: Metrics.Counter
    /// Block reads that did not find their block in the cache: each reader counts, also one
    /// that then waits on another reader's fill (so this is not the number of store GETs).
    let misses: Metrics.Counter
    /// Store GETs of a block: one per fill, however many readers wait on it.
    let fills: Metrics.Counter
    let bytesServed: Metrics.Counter
    /// Misses sent to the block's previous owner after a view change, and those it had cached
    /// (each one a store GET saved).
    let handoverAsked: Metrics.Counter
    let handoverHits: Metrics.Counter
    /// Misses not asked of their previous owner, which had answered only misses lately.
    let handoverSkipped: Metrics.Counter
    /// Blocks this worker handed to their new owner after a view change (fill-only READs sent).
    let handoverPushed: Metrics.Counter
    /// READs by name (flag bit 3): the version resolved here and sent with the bytes.
    let readsByName: Metrics.Counter
    /// READ replies whose data went out while their block was still being filled, and the bytes
    /// sent that way (before the fill ended).
    let repliesStreamed: Metrics.Counter
    let bytesStreamed: Metrics.Counter
    let bytesFilled: Metrics.Counter
    /// READ data RDMA-written into clients' memory: work requests and bytes; queue pairs
    /// connected; READs with a descriptor answered over TCP instead (the RDMA path failed).
    let rdmaWrites: Metrics.Counter
    let rdmaBytes: Metrics.Counter
    let rdmaConnections: Metrics.Counter
    let rdmaFallbacks: Metrics.Counter
    /// RDMA writes that waited for room (the device had `maxTransfers` out, or the queue pair was full).
    let rdmaBusy: Metrics.Counter
    let fillsInFlight: Metrics.Meter
    let corruptBlocks: Metrics.Counter
    let cachedBlocks: Metrics.Gauge
    let cachedBytes: Metrics.Gauge
    let connections: Metrics.Meter
    /// STATs answered with the last known version while the store was unreachable.
    let staleVersionsServed: Metrics.Counter
    /// Connections closed at once because `maxConnections` were open.
    let connectionsRefused: Metrics.Counter
    /// Connections still in their handshake shut down to make room (`maxConnections` open).
    let connectionsDisplaced: Metrics.Counter
    /// Admin connections closed at once because `adminMaxConnections` were open.
    let adminConnectionsRefused: Metrics.Counter
    /// Admin connections closed before their request arrived, to make room for a new one.
    let adminConnectionsDisplaced: Metrics.Counter
    private let errors: [StatusCode: Metrics.Counter]

    public init() {
        let factory = PrometheusMetricsFactory(registry: registry)
        self.factory = factory
        hits = Metrics.Counter(label: "shoal_hits_total", factory: factory)
        misses = Metrics.Counter(label: "shoal_misses_total", factory: factory)
        fills = Metrics.Counter(label: "shoal_fills_total", factory: factory)
        bytesServed = Metrics.Counter(label: "shoal_bytes_served_total", factory: factory)
        handoverAsked = Metrics.Counter(label: "shoal_handover_asked_total", factory: factory)
        handoverHits = Metrics.Counter(label: "shoal_handover_hits_total", factory: factory)
        handoverSkipped = Metrics.Counter(label: "shoal_handover_skipped_total", factory: factory)
        handoverPushed = Metrics.Counter(label: "shoal_handover_pushed_total", factory: factory)
        readsByName = Metrics.Counter(label: "shoal_reads_by_name_total", factory: factory)
        bytesFilled = Metrics.Counter(label: "shoal_bytes_filled_total", factory: factory)
        rdmaWrites = Metrics.Counter(label: "shoal_rdma_writes_total", factory: factory)
        rdmaBytes = Metrics.Counter(label: "shoal_rdma_bytes_total", factory: factory)
        rdmaConnections = Metrics.Counter(label: "shoal_rdma_connections_total", factory: factory)
        rdmaFallbacks = Metrics.Counter(label: "shoal_rdma_fallbacks_total", factory: factory)
        rdmaBusy = Metrics.Counter(label: "shoal_rdma_busy_total", factory: factory)
        repliesStreamed = Metrics.Counter(label: "shoal_replies_streamed_total", factory: factory)
        bytesStreamed = Metrics.Counter(label: "shoal_bytes_streamed_total", factory: factory)
        fillsInFlight = Metrics.Meter(label: "shoal_fills_in_flight", factory: factory)
        corruptBlocks = Metrics.Counter(label: "shoal_corrupt_blocks_total", factory: factory)
        cachedBlocks = Metrics.Gauge(label: "shoal_cached_blocks", factory: factory)
        cachedBytes = Metrics.Gauge(label: "shoal_cached_bytes", factory: factory)
        connections = Metrics.Meter(label: "shoal_connections", factory: factory)
        staleVersionsServed = Metrics.Counter(label: "shoal_stale_versions_served_total", factory: factory)
        connectionsRefused = Metrics.Counter(label: "shoal_connections_refused_total", factory: factory)
        connectionsDisplaced = Metrics.Counter(label: "shoal_connections_displaced_total", factory: factory)
        adminConnectionsRefused = Metrics.Counter(label: "shoal_admin_connections_refused_total", factory: factory)
        adminConnectionsDisplaced = Metrics.Counter(label: "shoal_admin_connections_displaced_total", factory: factory)
        var errors: [StatusCode: Metrics.Counter] = [:]
        for code in StatusCode.allCases where code != .ok {
            errors[code] = Metrics.Counter(label: "shoal_errors_total", dimensions: [("kind", code.label)], factory: factory)
        }
        self.errors = errors
    }

    func error(_ code: StatusCode) { errors[code]?.increment() }

    private let factory: PrometheusMetricsFactory
    private var diskGauges: [String: [String: Metrics.Gauge]] = [:]
    private let diskLock = ConditionLock()

    private var admissionGauges: [Metrics.Gauge] = []
    private var datasetGauges: [String: [Metrics.Gauge]] = [:]

    /// Publishes reads per dataset (bounded by DatasetStats' limit).
    func record(datasets: [(String, DatasetStats.Counts, DatasetBlocks)]) {
        diskLock.withLock {
            for (name, c, cached) in datasets {
                let gauges = datasetGauges[name] ?? ["shoal_dataset_hits", "shoal_dataset_misses", "shoal_dataset_hit_ratio",
                                                     "shoal_dataset_bytes_served", "shoal_dataset_bytes_filled",
                                                     "shoal_dataset_cached_blocks", "shoal_dataset_cached_bytes", "shoal_dataset_evictions"].map {
                    Metrics.Gauge(label: $0, dimensions: [("dataset", name)], factory: factory)
                }
                datasetGauges[name] = gauges
                gauges[0].record(Double(c.hits))
                gauges[1].record(Double(c.misses))
                gauges[2].record(c.hitRatio)
                gauges[3].record(Double(c.bytesServed))
                gauges[4].record(Double(c.bytesFilled))
                gauges[5].record(Double(cached.blocks))
                gauges[6].record(Double(cached.bytes))
                gauges[7].record(Double(cached.evictions))
            }
        }
    }

    /// Publishes what the admission policy let through and the write budget spent.
    func record(admission a: AdmissionPolicy.Stats) {
        diskLock.withLock {
            if admissionGauges.isEmpty {
                admissionGauges = ["shoal_admitted_blocks", "shoal_refused_first_miss_blocks", "shoal_refused_write_budget_blocks",
                                   "shoal_write_budget_used_ratio"].map { Metrics.Gauge(label: $0, factory: factory) }
            }
            admissionGauges[0].record(Double(a.admitted))
            admissionGauges[1].record(Double(a.refusedFirstMiss))
            admissionGauges[2].record(Double(a.refusedBudget))
            admissionGauges[3].record(a.budgetUsed)
        }
    }

    private var tierGauges: [Metrics.Gauge] = []

    /// The DRAM tier's counters (refreshed on every scrape).
    func record(tier t: MemoryTierStats) {
        diskLock.withLock {
            if tierGauges.isEmpty {
                tierGauges = ["shoal_memory_tier_hits", "shoal_memory_tier_misses", "shoal_memory_tier_loads", "shoal_memory_tier_evictions",
                              "shoal_memory_tier_resident_blocks", "shoal_memory_tier_resident_bytes",
                              "shoal_memory_tier_pages_moved"].map { Metrics.Gauge(label: $0, factory: factory) }
            }
            tierGauges[0].record(Double(t.hits))
            tierGauges[1].record(Double(t.misses))
            tierGauges[2].record(Double(t.loads))
            tierGauges[3].record(Double(t.evictions))
            tierGauges[4].record(Double(t.resident))
            tierGauges[5].record(Double(t.residentBytes))
            tierGauges[6].record(Double(t.pagesMoved))
        }
    }

    /// Publishes each disk's state as gauges labelled with its path (refreshed on every scrape).
    func record(disks: [CacheDiskStats]) {
        diskLock.withLock {
            for d in disks {
                let values: [(String, Double)] = [
                    ("shoal_disk_blocks", Double(d.blocks)), ("shoal_disk_capacity_bytes", Double(d.capacity)),
                    ("shoal_disk_hits", Double(d.hits)), ("shoal_disk_misses", Double(d.misses)),
                    ("shoal_disk_evictions", Double(d.evictions)), ("shoal_disk_reinserted", Double(d.reinserted)),
                    ("shoal_disk_corrupt_blocks", Double(d.corrupt)), ("shoal_disk_bytes_written", Double(d.bytesWritten)),
                    ("shoal_disk_index_bytes", Double(d.indexBytes)), ("shoal_disk_in_service", d.failure == nil ? 1 : 0),
                    ("shoal_disk_inserts_dropped", Double(d.insertsDropped)),
                ]
                var gauges = diskGauges[d.path] ?? [:]
                for (name, value) in values {
                    let g = gauges[name] ?? Metrics.Gauge(label: name, dimensions: [("disk", d.path)], factory: factory)
                    gauges[name] = g
                    g.record(value)
                }
                diskGauges[d.path] = gauges
            }
        }
    }

    /// The Prometheus text exposition.
    public func render() -> String { registry.emitToString() }

    /// The value of one sample in the exposition (tests and `/status`).
    public func value(_ name: String) -> Double {
        for line in render().split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "0") ?? 0
        }
        return 0
    }
}
