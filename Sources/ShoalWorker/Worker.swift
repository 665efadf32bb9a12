import Logging
import ServiceLifecycle
import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalIO
import ShoalSys
import Synchronization
import ShoalTransport

/// A cache worker: buffers, cache disks, stores, the TCP data plane and the admin port.
public final class Worker: @unchecked Sendable {
    public let config: WorkerConfig
    public let metrics = WorkerMetrics()
    public let cache: BlockCache
    let service: BlockService
    let pool: BufferPool
    private var plane: DataPlane?
    private var admin: AdminServer?
    private var registration: EtcdRegistration?
    private let logger: Logger
    /// Where the hot prefixes are kept (saved every minute by `WarmUpService`, and at stop).
    private var hotFile = ""
    /// One save of the hot prefixes at a time.
    private let hotSaving = ConditionLock()

    /// Opens the cache disks (recovering what they hold) and allocates the buffer pool.
    public init(config: WorkerConfig, logger: Logger) throws(ShoalError) {
        WorkerConfig.installYAMLMembers()
        try config.validate()
        self.config = config
        self.logger = logger
        cache = try BlockCache(disks: config.caches, expectedBlockSize: config.blockSize, logger: logger)
        // What must outlive a restart besides the cache (the pins) lives in the state folder.
        let state = try config.resolvedStateDirectory()
        do { try FileSystem.createDirectories(state, permissions: 0o700) } catch {
            throw ShoalError(.badRequest, "key 'stateDirectory': cannot create \(state): \(error)")
        }
        if let warning = try cache.pins.persist(to: state + "/pins.json") {
            logger.warning("the pins file was damaged", metadata: ["error": "\(warning)"])
        }
        hotFile = state + "/hot.json"
        let bufferSize = Int(config.blockSize) + BlockCache.dataOffset
        let tierSlots = Int(config.memoryTier / UInt64(bufferSize))
        if config.serveFromMemory && tierSlots == 0 {
            throw ShoalError(.badRequest, "key 'serveFromMemory': blocks are held in the DRAM tier, so 'memoryTier' must hold at least one block (\(ByteSize.format(UInt64(bufferSize))))")
        }
        let pool: BufferPool
        do {
            // The buffers RDMA writes from sit on the device's NUMA node (docs/DESIGN.md, "RDMA").
            let node = config.rdma.map(\.choice).flatMap { r in r.simulated ? nil : (r.device ?? Verbs.devices().first?.name).flatMap { NUMA.node(ofRDMADevice: $0) } }
            pool = try BufferPool(bufferSize: bufferSize, count: config.buffers, tierSlots: tierSlots, numaNode: node)
        } catch {
            let total = UInt64(config.buffers + tierSlots) * UInt64(bufferSize)
            throw ShoalError(.badRequest, "keys 'buffers' and 'memoryTier': cannot allocate \(ByteSize.format(total)) (\(config.buffers) I/O buffers "
                             + "and a DRAM tier of \(ByteSize.format(config.memoryTier))): \(error); lower them")
        }
        self.pool = pool
        var stores: [String: any ObjectStore] = [:]
        for s in config.stores { stores[s.name] = s.makeStore() }
        let admission = AdmissionPolicy(config: config.admission, capacity: cache.capacity,
                                        expectedBlocks: Int(cache.capacity / (config.blockSize + 4096)))
        service = BlockService(stores: stores, cache: cache, pool: pool, metadataTTL: config.metadataTTL, metrics: metrics,
                               blockSize: UInt32(config.blockSize), admission: admission, thrashGuard: config.thrashGuard,
                               serveFromMemory: config.serveFromMemory, answerWithoutData: config.answerWithoutData,
                               serveStaleOnOutage: config.serveStaleOnOutage, logger: logger)
        service.fillParts = config.fillParts
        service.warmFetchesHere.store(min(config.fillThreads, config.stores.map(\.maxConcurrency).min() ?? 0) / 2, ordering: .relaxed)
        if FileSystem.exists(hotFile) {
            // A damaged file costs the history, not the start.
            do { try service.datasets.loadHot(try FileSystem.readFile(hotFile)) } catch {
                logger.warning("hot prefixes not read; starting without their history", metadata: ["file": "\(hotFile)", "error": "\(error)"])
            }
        }
        var source: (any MembershipSource)?
        if let path = config.membersFile, let id = config.memberID {
            let watcher = try MembersWatcher(path: path)
            guard watcher.current().view.index(of: id) != nil else {
                throw ShoalError(.badRequest, "key 'memberID': '\(id)' is not a member in \(path) (members: \(watcher.current().view.members.map(\.id).joined(separator: ", ")))")
            }
            source = watcher
        } else if let settings = config.etcd {
            let etcd = EtcdMembers(client: try EtcdClient(endpoints: settings.endpoints, user: settings.user, password: settings.password), prefix: settings.prefix)
            if let error = etcd.error { logger.warning("etcd not reachable yet; serving every READ until it is", metadata: ["error": "\(error)"]) }
            source = etcd
        }
        if let source, let id = config.memberID {
            // Every view the source takes reaches hand-over here (not on each READ).
            source.onChange = { [logger, service] view, placement in
                service.handover?.observe(view, placement)
                logger.info("cluster view changed", metadata: [
                    "epoch": "\(view.epoch)", "members": "\(view.members.map { "\($0.id)=\($0.state.rawValue)" }.joined(separator: ","))",
                ])
            }
            source.onError = { [logger, name = source.name] error in
                logger.warning("view not taken; the last good one stays", metadata: ["source": "\(name)", "error": "\(error)"])
            }
            service.members = (source, id)
        }
        if let (source, id) = service.members, config.handoverSeconds > 0 {
            if config.tls == nil {
                let handover = Handover(source: source, myID: id, secret: config.secret, windowSeconds: config.handoverSeconds, logger: logger,
                                        cache: cache, metrics: metrics, pushRate: config.handoverRate)
                handover.observe()  // with etcd, the view from before this worker registers
                service.handover = handover
            } else {
                logger.notice("hand-over between workers is off with TLS on the data plane (workers hold no CA to check each other by)")
            }
        }
        router = makeRouter()
        if config.serveFromMemory || config.answerWithoutData || config.allowUntaggedFrames {
            logger.warning("benchmark switches on: not for service", metadata: [
                "serveFromMemory": "\(config.serveFromMemory)", "answerWithoutData": "\(config.answerWithoutData)",
                "allowUntaggedFrames": "\(config.allowUntaggedFrames)",
            ])
        }
        updateGauges()
    }

    /// The RDMA device the data plane writes READ data from (nil: TCP only).
    public var rdmaDevice: (any RDMADevice)? { plane?.rdma?.device }

    /// RDMA writes outstanding on the device now, the most ever at once, and the bound.
    public var rdmaTransfers: (outstanding: Int, highWater: Int, max: Int)? {
        plane?.rdma.map { ($0.transfersOutstanding, $0.transfersHighWater, $0.maxTransfers) }
    }

    /// The data-plane port (the configured one, or the one picked for port 0).
    public var port: UInt16 { plane?.port ?? config.listen.port }
    public var adminPort: Int? { admin?.port }

    /// Starts the TCP listener (with TLS, if configured). Refuses to start when the system's
    /// random source fails: without it no connection can be authenticated.
    public func start() throws(ShoalError) {
        do { _ = try secureRandomBytes(MutualAuth.nonceSize) } catch {
            throw ShoalError(.internal, "cannot start: \(error); the worker needs it to authenticate every connection")
        }
        var tls: TLSContext?
        if let files = config.tls {
            do { tls = try TLSContext.server(certificateFile: files.certFile, keyFile: files.keyFile) } catch {
                throw ShoalError(.badRequest, "key 'tls': \(error.message)")
            }
        }
        var planeConfig = DataPlaneConfig(secret: config.secret)
        planeConfig.tls = tls
        planeConfig.allowsUntaggedFrames = config.allowUntaggedFrames
        planeConfig.shards = config.shards > 0 ? config.shards : max(1, processorCount())
        planeConfig.fillThreads = config.fillThreads
        planeConfig.maxConnections = config.maxConnections
        planeConfig.maxInFlight = UInt16(config.maxInFlight)
        planeConfig.leasesPerConnection = config.buffersPerConnection
        planeConfig.sendStallNanos = UInt64(max(0.1, config.replyStallTimeout) * 1e9)
        planeConfig.sendZeroCopy = config.sendZeroCopy
        let rdma = try config.rdma.map { (settings) throws(ShoalError) in try WorkerRDMA(settings, pool: pool) }
        if let rdma, let handover = service.handover {
            // Blocks taken from their previous owner come by RDMA too, into the registered pool.
            handover.useRDMA(ClientRDMA(device: rdma.device, preregistered: [rdma.region]))
        }
        do {
            let plane = try DataPlane(service: service, pool: pool, config: planeConfig, endpoint: config.listen, rdma: rdma, logger: logger)
            try plane.start()
            self.plane = plane
        } catch {
            throw ShoalError(.badRequest, "cannot listen on \(config.listen): \(error)")
        }
        if let settings = config.etcd, let (source, id) = service.members, let etcd = source as? EtcdMembers {
            let address = config.advertise?.description ?? "\(config.listen.host):\(port)"
            let member = Member(id: id, address: address, weight: config.weight ?? Double(cache.capacity), rdma: rdma != nil)
            let registration = EtcdRegistration(client: etcd.client, prefix: etcd.prefix, member: member, leaseSeconds: settings.leaseSeconds, logger: logger)
            registration.start()
            self.registration = registration
            etcd.startWatching()
        }
        logger.info("worker listening", metadata: [
            "listen": "\(config.listen.host):\(port)", "tls": "\(tls == nil ? "off (frames tagged)" : "TLS 1.3")", "rdma": "\(rdma.map { "\($0.device.name)\($0.device.isSimulated ? " (SIMULATED)" : "")" } ?? "off")",
            "numaNode": "\(pool.numaNode.map(String.init) ?? "none")", "blocks": "\(cache.blockCount)",
            "cached": "\(ByteSize.format(cache.bytesCached))", "capacity": "\(ByteSize.format(cache.capacity))",
        ])
    }

    /// Starts the admin HTTP port, if configured.
    public func startAdmin() async throws {
        guard let endpoint = config.admin else { return }
        admin = try await AdminServer(endpoint: endpoint, limits: config.adminLimits, secret: config.secret,
                                      hosts: [currentHostName()].compactMap { $0 },
                                      refused: { [metrics] in metrics.adminConnectionsRefused.increment() },
                                      displaced: { [metrics] in metrics.adminConnectionsDisplaced.increment() }) { [self] method, uri in route(method: method, uri) }
        logger.info("admin listening", metadata: ["admin": "\(endpoint.host):\(adminPort ?? 0)"])
    }

    func updateGauges() {
        metrics.cachedBlocks.record(cache.blockCount)
        metrics.cachedBytes.record(Int64(cache.bytesCached))
        metrics.record(disks: cache.diskStats)
        metrics.record(admission: service.admission.snapshot)
        if let tier = plane?.tier { metrics.record(tier: tier.stats) }
        metrics.record(datasets: datasetRows().map { ($0.name, $0.reads, $0.cached) })
    }

    func route(method: String = "GET", _ uri: String) -> AdminResponse { router.route(method: method, uri: uri) }

    /// The admin port's pages, each a typed handler (bodies: AdminRouter.swift); made at the end
    /// of `init` (never lazily: the admin port's threads read it at once).
    private var router = AdminRouter()

    private func makeRouter() -> AdminRouter {
        var r = AdminRouter()
        r.text("GET", "/metrics", contentType: "text/plain; version=0.0.4") { [unowned self] _ in
            updateGauges()
            return metrics.render()
        }
        r.text("GET", "/healthz") { _ in "ok\n" }
        r.json("GET", "/status") { [unowned self] _ in status() }
        r.json("GET", "/hot") { [unowned self] call throws(ShoalError) in try hot(call.query) }
        r.json("GET", "/pins") { [unowned self] _ in pins() }
        r.json("POST", "/pins") { [unowned self] call throws(ShoalError) in
            let url = try call.require("prefix", example: "s3://bucket/prefix")
            var ttl: Double?
            if let t = call.query["ttl"] {
                guard let s = DurationText.parseSeconds(t), s > 0 else { throw ShoalError(.badRequest, "ttl '\(t)' is not a duration (e.g. 1h)") }
                ttl = s
            }
            try pin(url, ttlSeconds: ttl)
            return pins()
        }
        r.json("DELETE", "/pins") { [unowned self] call throws(ShoalError) in
            try unpin(try call.require("prefix", example: "s3://bucket/prefix"))
            return pins()
        }
        r.json("POST", "/evict") { [unowned self] call throws(ShoalError) in
            let url = try call.require("prefix", example: "s3://bucket/prefix")
            let (objects, blocks, bytes) = try evict(url)
            return EvictBody(prefix: url, objects: objects, blocks: blocks, bytes: bytes)
        }
        return r
    }

    /// Pins an object prefix (`s3://[store@]bucket/prefix`): its blocks are kept through eviction
    /// until unpinned or `ttlSeconds` pass. Refused when the prefix holds more than the room left.
    public func pin(_ url: String, ttlSeconds: Double?) throws(ShoalError) {
        let p = try ObjectPrefix.parse(url)
        let (store, bucket, prefix) = (p.store, p.bucket, p.prefix)
        let s = try service.store(store)
        let bytes = try s.listAll(bucket: bucket, prefix: prefix).reduce(UInt64(0)) { $0 + $1.version.size }
        let others = cache.pins.active.filter { !($0.store == store && $0.bucket == bucket && $0.prefix == prefix) }
        let taken = others.reduce(UInt64(0)) { $0 + $1.bytes }
        let room = cache.pinnableBytes
        guard taken + bytes <= room else {
            throw ShoalError(.tooLarge, "pin of \(url) (\(ByteSize.format(bytes))) refused: \(ByteSize.format(room > taken ? room - taken : 0)) left for pins on this worker (\(ByteSize.format(taken)) already pinned of \(ByteSize.format(room)))")
        }
        let expires = ttlSeconds.map { wallClockSeconds() + $0 }
        try cache.pins.add(PinRule(store: store, bucket: bucket, prefix: prefix, expiresAt: expires, bytes: bytes))
        logger.info("pinned", metadata: ["prefix": "\(url)", "bytes": "\(bytes)", "ttl": "\(ttlSeconds.map { "\($0)s" } ?? "none")"])
    }

    /// Drops the cached blocks of the objects under a prefix (their current versions, as the
    /// store lists them), pinned or not, from this worker's cache and DRAM tier.
    public func evict(_ url: String) throws(ShoalError) -> (objects: Int, blocks: Int, bytes: UInt64) {
        let p = try ObjectPrefix.parse(url)
        let entries = try service.store(p.store).listAll(bucket: p.bucket, prefix: p.prefix)
        guard !entries.isEmpty else { throw ShoalError(.notFound, "nothing under \(url) in store '\(p.store)'") }
        let layout = BlockLayout(blockSize: config.blockSize)
        var blocks = 0
        var bytes: UInt64 = 0
        for e in entries {
            let object = ObjectRef(store: p.store, bucket: p.bucket, key: e.key)
            for i in 0..<layout.blockCount(objectSize: e.version.size) {
                let key = BlockKey(object: object, etag: e.version.etag, objectSize: e.version.size, blockSize: UInt32(config.blockSize), index: i)
                let id = BlockID(hashing: key.encoded)
                plane?.tier?.remove(id)
                if let n = cache.evict(key, id: id) {
                    blocks += 1
                    bytes += n
                }
            }
        }
        logger.info("evicted", metadata: ["prefix": "\(url)", "objects": "\(entries.count)", "blocks": "\(blocks)"])
        return (entries.count, blocks, bytes)
    }

    public func unpin(_ url: String) throws(ShoalError) {
        let p = try ObjectPrefix.parse(url)
        let (store, bucket, prefix) = (p.store, p.bucket, p.prefix)
        guard try cache.pins.remove(store: store, bucket: bucket, prefix: prefix) else {
            throw ShoalError(.notFound, "\(url) is not pinned on this worker")
        }
    }

    func pins() -> PinsBody {
        let now = wallClockSeconds()
        return PinsBody(pinnable: cache.pinnableBytes, pins: cache.pins.active.map { r in
            PinsBody.Pin(prefix: r.url, bytes: r.bytes, secondsLeft: r.expiresAt.map { Int(max(0, $0 - now).rounded()) })
        })
    }

    struct DatasetRow {
        var name: String
        var reads: DatasetStats.Counts
        var cached: DatasetBlocks
    }

    /// Reads since start (by name) joined with what is cached (by tag); datasets cached but not
    /// read since start are named by their tag.
    func datasetRows() -> [DatasetRow] {
        plane?.flushStats()
        var cached = cache.datasetBlocks
        var rows: [DatasetRow] = []
        for (name, reads) in service.datasets.snapshot {
            let tag = ObjectRef.tag(ofDataset: name)
            rows.append(DatasetRow(name: name, reads: reads, cached: cached.removeValue(forKey: tag) ?? DatasetBlocks()))
        }
        for (tag, c) in cached.sorted(by: { $0.key < $1.key }) where c.blocks > 0 {
            rows.append(DatasetRow(name: "dataset#\(String(tag, radix: 16))", reads: DatasetStats.Counts(), cached: c))
        }
        return rows
    }

    /// The worker's state: totals and, per disk, its counters and whether (and why) it is out of service.
    func status() -> StatusBody {
        let a = service.admission.snapshot
        let tier = (plane?.tier?.stats).map { t in
            StatusBody.MemoryTier(pages: pool.tierSlots, resident: t.resident, residentBytes: t.residentBytes, pagesMoved: t.pagesMoved,
                                  hits: t.hits, misses: t.misses, loads: t.loads, evictions: t.evictions)
        }
        var cluster: StatusBody.Cluster?
        if let (source, id) = service.members {
            let view = source.current(force: false).view
            cluster = StatusBody.Cluster(source: source.name, memberID: id, epoch: view.epoch,
                                         members: view.members.map { StatusBody.Member(id: $0.id, address: $0.address, state: $0.state.rawValue, weight: $0.weight) },
                                         viewError: source.error, registrationError: registration?.error)
        }
        return StatusBody(
            listen: "\(config.listen.host):\(port)", blocks: cache.blockCount, bytesCached: cache.bytesCached, capacity: cache.capacity,
            connections: plane?.connectionCount ?? 0, fillsInFlight: service.fills.inFlight, serveFromMemory: config.serveFromMemory,
            answerWithoutData: config.answerWithoutData,
            admission: StatusBody.Admission(admitted: a.admitted, refusedFirstMiss: a.refusedFirstMiss, refusedWriteBudget: a.refusedBudget,
                                            refusedThrashGuard: a.refusedSubset, writeBudgetUsed: (a.budgetUsed * 10000).rounded() / 10000),
            memoryTier: tier, cluster: cluster,
            disks: cache.diskStats.map { d in
                StatusBody.Disk(path: d.path, inService: d.failure == nil, failure: d.failure, blocks: d.blocks, capacity: d.capacity, hits: d.hits,
                                misses: d.misses, evictions: d.evictions, reinserted: d.reinserted, corruptBlocks: d.corrupt,
                                bytesWritten: d.bytesWritten, indexBytes: d.indexBytes)
            },
            datasets: datasetRows().map { r in
                StatusBody.Dataset(dataset: r.name, hits: r.reads.hits, misses: r.reads.misses, hitRatio: (r.reads.hitRatio * 10000).rounded() / 10000,
                                   bytesServed: r.reads.bytesServed, bytesFilled: r.reads.bytesFilled, blocks: r.cached.blocks,
                                   bytesCached: r.cached.bytes, evictions: r.cached.evictions)
            })
    }

    /// `status()` as JSON (for tools and tests).
    public func statusJSON() -> String { (try? AdminRouter.encode(status())) ?? "{}" }

    /// The DRAM tier's counters (nil: no tier).
    var tierStats: MemoryTierStats? { plane?.tier?.stats }

    /// Threads the data plane runs: its shards and fill threads.
    var dataPlaneThreads: Int { (plane?.shards.count ?? 0) + (plane?.fillPool.threads ?? 0) }


    /// Stops accepting, lets requests in progress finish, and flushes the cache files.
    public func stop() async {
        await admin?.close()
        admin = nil
        stopDataPlane()
        logger.info("worker stopped")
    }

    /// Writes the hot prefixes to the state folder (a whole new file, renamed into place),
    /// with the counts the io shards hold so far.
    func saveHot() {
        hotSaving.withLock {
            plane?.flushStats()
            writeHot()
        }
    }

    private func writeHot() {
        do {
            try FileSystem.replaceFile(hotFile, Array(service.datasets.hotEncoded.utf8))
        } catch {
            logger.warning("could not save the hot prefixes", metadata: ["file": "\(hotFile)", "error": "\(error)"])
        }
    }

    /// Turns away the warm fills still waiting (and any that come later): the worker is
    /// stopping, and its warms go on with the blocks' next owners.
    func closeWarmUpQueue() {
        hotSaving.withLock { plane?.fillPool.closeBackground() }
    }

    /// The prefixes read most since `seconds` ago, with what this worker holds of each.
    func hot(_ query: AdminQuery) throws(ShoalError) -> HotBody {
        var seconds = 24.0 * 3600
        if let s = query["since"] {
            guard let v = DurationText.parseSeconds(s), v > 0 else { throw ShoalError(.badRequest, "since '\(s)' is not a duration (e.g. 24h)") }
            seconds = v
        }
        var limit = 20
        if let l = query["limit"] {
            guard let v = Int(l), (1...1000).contains(v) else { throw ShoalError(.badRequest, "limit '\(l)' is not 1-1000") }
            limit = v
        }
        plane?.flushStats()
        let cached = cache.datasetBlocks
        return HotBody(sinceSeconds: Int(seconds), prefixes: service.datasets.hottest(since: wallClockSeconds() - seconds, limit: limit).map { e in
            HotBody.Prefix(prefix: e.name, reads: e.reads, bytesRead: e.bytes, error: e.error, bytesCached: cached[ObjectRef.tag(ofDataset: e.name)]?.bytes ?? 0)
        })
    }

    /// Stops the data plane and closes the cache (writing its snapshot), synchronously.
    public func stopDataPlane() {
        // Out of the view first: clients move this worker's blocks before its port closes.
        registration?.stop()
        registration = nil
        service.members?.source.close()
        service.handover?.close()
        plane?.stop()  // closes the stores too; its shards report their last counts
        // The shards are gone: what they counted is all in, so this save is the last word.
        hotSaving.withLock {
            plane = nil
            writeHot()
        }
        cache.close()
    }
}

/// Runs a worker under swift-service-lifecycle: starts it, waits for graceful shutdown (SIGTERM,
/// SIGINT), then drains it.
public struct WorkerService: Service {
    let worker: Worker

    public init(worker: Worker) { self.worker = worker }

    public func run() async throws {
        try worker.start()
        try await worker.startAdmin()
        try? await gracefulShutdown()
        await worker.stop()
    }
}
