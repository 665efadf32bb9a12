import Logging
import ServiceLifecycle
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalSys
import ShoalTransport

/// A cache worker: buffers, cache disks, stores, the TCP data plane and the admin port.
public final class Worker: @unchecked Sendable {
    public let config: WorkerConfig
    public let metrics = WorkerMetrics()
    public let cache: BlockCache
    let service: BlockService
    private var server: TCPServer?
    private var admin: AdminServer?
    private let logger: Logger

    /// Opens the cache disks (recovering what they hold) and allocates the buffer pool.
    public init(config: WorkerConfig, logger: Logger) throws(ShoalError) {
        try config.validate()
        self.config = config
        self.logger = logger
        cache = try BlockCache(disks: config.caches, expectedBlockSize: config.blockSize, logger: logger)
        let pool: BufferPool
        do {
            pool = try BufferPool(bufferSize: Int(config.blockSize) + BlockCache.dataOffset, count: config.buffers)
        } catch {
            throw ShoalError(.internal, "cannot allocate \(config.buffers) I/O buffers of \(ByteSize.format(config.blockSize)): \(error)")
        }
        var stores: [String: any ObjectStore] = [:]
        for s in config.stores { stores[s.name] = s.makeStore() }
        let admission = AdmissionPolicy(config: config.admission, capacity: cache.capacity,
                                        expectedBlocks: Int(cache.capacity / (config.blockSize + 4096)))
        service = BlockService(stores: stores, cache: cache, pool: pool, metadataTTL: config.metadataTTL, metrics: metrics,
                               blockSize: UInt32(config.blockSize), admission: admission, logger: logger)
        updateGauges()
    }

    /// The data-plane port (the configured one, or the one picked for port 0).
    public var port: UInt16 { server?.port ?? config.listen.port }
    public var adminPort: Int? { admin?.port }

    /// Starts the TCP listener.
    public func start() throws(ShoalError) {
        let handler = ConnectionHandler(service: service, secret: config.secret, logger: logger)
        do {
            let server = try TCPServer(endpoint: config.listen, maxConnections: config.maxConnections) { socket in
                handler.serve(socket)
            }
            try server.start()
            self.server = server
        } catch {
            throw ShoalError(.badRequest, "cannot listen on \(config.listen): \(error)")
        }
        logger.info("worker listening", metadata: [
            "listen": "\(config.listen.host):\(port)", "blocks": "\(cache.blockCount)",
            "cached": "\(ByteSize.format(cache.bytesCached))", "capacity": "\(ByteSize.format(cache.capacity))",
        ])
    }

    /// Starts the admin HTTP port, if configured.
    public func startAdmin() async throws {
        guard let endpoint = config.admin else { return }
        admin = try await AdminServer(endpoint: endpoint) { [self] path in route(path) }
        logger.info("admin listening", metadata: ["admin": "\(endpoint.host):\(adminPort ?? 0)"])
    }

    func updateGauges() {
        metrics.cachedBlocks.record(cache.blockCount)
        metrics.cachedBytes.record(Int64(cache.bytesCached))
        metrics.record(disks: cache.diskStats)
        metrics.record(admission: service.admission.snapshot)
    }

    func route(_ path: String) -> AdminResponse {
        switch path.split(separator: "?").first.map(String.init) ?? path {
        case "/metrics":
            updateGauges()
            return AdminResponse(status: 200, contentType: "text/plain; version=0.0.4", body: metrics.render())
        case "/healthz":
            return AdminResponse(status: 200, contentType: "text/plain", body: "ok\n")
        case "/status":
            return AdminResponse(status: 200, contentType: "application/json", body: statusJSON() + "\n")
        default:
            return AdminResponse(status: 404, contentType: "text/plain", body: "no such page: \(path) (try /metrics, /healthz, /status)\n")
        }
    }

    /// The worker's state as JSON: totals and, per disk, its counters and whether (and why) it is out of service.
    public func statusJSON() -> String {
        func quote(_ s: String) -> String {
            var out = "\""
            for ch in s.unicodeScalars {
                switch ch {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default: if ch.value < 0x20 { out += "?" } else { out.unicodeScalars.append(ch) }
                }
            }
            return out + "\""
        }
        let disks = cache.diskStats.map { d in
            "{\"path\":\(quote(d.path)),\"inService\":\(d.failure == nil),\"failure\":\(d.failure.map(quote) ?? "null"),"
                + "\"blocks\":\(d.blocks),\"capacity\":\(d.capacity),\"hits\":\(d.hits),\"misses\":\(d.misses),"
                + "\"evictions\":\(d.evictions),\"reinserted\":\(d.reinserted),\"corruptBlocks\":\(d.corrupt),"
                + "\"bytesWritten\":\(d.bytesWritten),\"indexBytes\":\(d.indexBytes)}"
        }
        let a = service.admission.snapshot
        let admission = "{\"admitted\":\(a.admitted),\"refusedFirstMiss\":\(a.refusedFirstMiss),\"refusedWriteBudget\":\(a.refusedBudget),"
            + "\"writeBudgetUsed\":\(formatFixed(a.budgetUsed, decimals: 4))}"
        return "{\"listen\":\(quote("\(config.listen.host):\(port)")),\"blocks\":\(cache.blockCount),\"bytesCached\":\(cache.bytesCached),"
            + "\"capacity\":\(cache.capacity),\"connections\":\(server?.connectionCount ?? 0),\"fillsInFlight\":\(service.fills.inFlight),"
            + "\"admission\":\(admission),\"disks\":[\(disks.joined(separator: ","))]}"
    }

    /// Stops accepting, lets requests in progress finish, and flushes the cache files.
    public func stop() async {
        server?.stop()
        server = nil
        await admin?.close()
        admin = nil
        cache.close()
        logger.info("worker stopped")
    }

    /// Stops the data plane synchronously (tests and non-async callers).
    public func stopDataPlane() {
        server?.stop()
        server = nil
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
