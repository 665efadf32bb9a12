import Logging
import ShoalCore
import ShoalStore
import ShoalIO
import ShoalSys

/// How the data plane serves (from `WorkerConfig`).
struct DataPlaneConfig: Sendable {
    var secret: [UInt8]
    var tls: TLSContext?
    var allowsUntaggedFrames = false
    var shards = 1
    var fillThreads = 8
    var maxConnections = 1024
    /// Requests one connection may keep in flight (announced in AUTH_OK).
    var maxInFlight: UInt16 = 32
    /// I/O buffers one connection may hold at once; its other requests wait their turn.
    var leasesPerConnection = 4
    /// A connection must finish its whole handshake (TLS included) within this time.
    var handshakeTimeoutNanos: UInt64 = 10_000_000_000
    /// A reply that makes no progress this long while other requests wait for a buffer closes
    /// its connection (a client that stopped reading would otherwise keep its buffers).
    var sendStallNanos: UInt64 = 5_000_000_000
    /// Send replies with data by SENDMSG_ZC (the NIC reads the leased buffers; on loopback the
    /// kernel copies anyway).
    var sendZeroCopy = false
    /// A reply that makes no progress this long closes its connection in any case.
    var sendTimeoutNanos: UInt64 = 60_000_000_000
}

/// The worker's data plane: the listening socket, the io shards that serve it (one thread and
/// one io_uring each), the fill threads, and what they share: the buffer pool and the places
/// for connections against `maxConnections`.
final class DataPlane: @unchecked Sendable {
    let service: BlockService
    let pool: BufferPool
    let park: LeasePark
    let fillPool: FillPool
    /// The DRAM tier's bookkeeping over the pool's tier slots (nil: no tier).
    let tier: MemoryTier?
    /// The RDMA device READ data is written from (nil: TCP only).
    let rdma: WorkerRDMA?
    let config: DataPlaneConfig
    let logger: Logger
    /// One listening socket per shard on the same port (SO_REUSEPORT): the kernel spreads new
    /// connections over the shards. (Every shard accepting on one socket left one shard with
    /// nearly all of them.)
    let listeners: [TCPSocket]
    let port: UInt16
    private(set) var shards: [Shard] = []
    /// Says once, at the first TLS connection, how TLS runs.
    let tlsReported = OnceFlag()
    /// Unauthenticated clients choose how many protocol errors happen (a fuzzer made thousands):
    /// a few lines per interval, the next one saying how many were left out.
    let protocolErrorLog = SharedLogRateLimiter(limit: 5, intervalNanos: 10_000_000_000)
    let refusedLog = SharedLogRateLimiter(limit: 5, intervalNanos: 10_000_000_000)

    private let lock = ConditionLock()
    private var places: ConnectionPlaces<UInt64>
    /// The socket of every connection holding a place, so one can be displaced from any shard.
    private var sockets: [UInt64: Int32] = [:]
    private var nextConnection: UInt64 = 1
    /// Requests waiting for a buffer, over all shards.
    private var leaseWaiters = 0

    init(service: BlockService, pool: BufferPool, config: DataPlaneConfig, endpoint: Endpoint, rdma: WorkerRDMA?, logger: Logger) throws(SysError) {
        self.rdma = rdma
        self.service = service
        self.pool = pool
        self.park = LeasePark(count: pool.count)
        self.fillPool = FillPool(threads: config.fillThreads) { () throws(SysError) -> IORing in try pool.consumerRing() }
        self.tier = service.tier
        self.config = config
        self.logger = logger
        var listeners: [TCPSocket] = []
        var port = endpoint.port
        if port == 0 {
            // A port the kernel picks is free: the first listener takes it.
            let (first, picked) = try TCPSocket.listen(endpoint, reusePort: true)
            listeners.append(first)
            port = picked
        } else {
            // A plain bind first: with SO_REUSEPORT alone, a second worker started on a port in
            // use would share it silently instead of failing with "address in use".
            try TCPSocket.listen(endpoint).0.close()
        }
        while listeners.count < max(1, config.shards) {
            listeners.append(try TCPSocket.listen(Endpoint(host: endpoint.host, port: port), reusePort: true).0)
        }
        self.listeners = listeners
        self.port = port
        places = ConnectionPlaces(limit: config.maxConnections)
    }

    /// Starts the fill threads and the shards; returns once every shard has its ring (or throws
    /// the first one's failure).
    func start() throws(SysError) {
        try fillPool.start()
        for i in 0..<max(1, config.shards) {
            let shard = try Shard(index: i, plane: self)
            shards.append(shard)
        }
        var failure: SysError?
        for shard in shards {
            do { try shard.start() } catch {
                failure = error
                break
            }
        }
        if let failure {
            stop()
            throw failure
        }
    }

    /// Stops accepting, closes every connection, lets the shards finish what they started and
    /// the fill threads finish their queue (cache writes included).
    func stop() {
        listeners.forEach { $0.shutdown() }
        for shard in shards { shard.requestStop() }
        // The stores' fetch threads end their transfers (with an error each), so no shard waits
        // on a GET: every shard stops before the plane goes.
        for store in service.stores.values { store.close() }
        for shard in shards { shard.waitUntilStopped(timeoutNanos: 10_000_000_000) }
        fillPool.stop()
        listeners.forEach { $0.close() }
    }

    /// Has every shard report the hits it counted so far (waits up to a quarter second).
    func flushStats() {
        let countdown = Countdown(shards.count)
        for shard in shards { shard.post(.flushStats(countdown)) }
        countdown.wait(timeoutNanos: 250_000_000)
    }

    var connectionCount: Int { lock.withLock { sockets.count } }

    enum Admission { case admitted(UInt64), full }

    /// Gives a new connection a place: when the worker is full, the oldest connection still in
    /// its handshake is shut down to make room (its shard sees the end and closes it).
    func admit(fd: Int32) -> Admission {
        lock.withLock {
            let id = nextConnection
            nextConnection += 1
            guard case .admitted(let victim) = places.admit(id) else { return .full }
            sockets[id] = fd
            if let victim, let victimFD = sockets.removeValue(forKey: victim) {
                // Under the lock: the victim's shard closes its fd only after removing it here.
                Sockets.shutdown(victimFD)
                service.metrics.connectionsDisplaced.increment()
            }
            return .admitted(id)
        }
    }

    func trust(_ id: UInt64) { lock.withLock { places.trust(id) } }

    /// The connection's place is given up; call before its fd is closed.
    func release(_ id: UInt64) {
        lock.withLock {
            places.release(id)
            sockets[id] = nil
        }
    }

    /// Requests waiting for a buffer (`starved`: waiting because every buffer is taken, not
    /// because their own connection holds its share).
    func noteWaiting(_ delta: Int, starved: Bool) {
        lock.withLock {
            leaseWaiters += delta
            if starved { starvedWaiters += delta }
        }
    }

    private var starvedWaiters = 0
    /// Whether requests wait while every buffer is taken: then a connection whose replies stopped
    /// moving gives its buffers up.
    var starved: Bool { lock.withLock { starvedWaiters > 0 } }

    /// Gives a lease back to the pool and wakes the shards that have requests waiting for one;
    /// `caller`, a shard giving it back, serves its own waiters itself and is not woken.
    func giveLease(_ lease: consuming Lease, caller: Shard? = nil) {
        pool.give(lease)
        if lock.withLock({ leaseWaiters > 0 }) {
            for shard in shards where shard !== caller && shard.hasWaiters { shard.post(.leaseFreed) }
        }
    }

    /// Gives back parked lease `i` (see `giveLease`).
    func giveParked(_ i: Int, caller: Shard? = nil) {
        if let lease = park.unpark(i) { giveLease(lease, caller: caller) }
    }
}

/// A flag set once: the first caller of `firstTime` gets true.
final class OnceFlag: @unchecked Sendable {
    private let lock = ConditionLock()
    private var done = false

    func firstTime() -> Bool { lock.withLock { defer { done = true }; return !done } }
}

extension BufferPool {
    /// The memory of slot `slot` of the DRAM tier `tier` (kept in the pool's tier buffers, its
    /// pages), and the fixed-buffer index of its page.
    func tierSlot(_ slot: Int, of tier: MemoryTier) -> (base: UnsafeMutableRawPointer, fixedIndex: Int) {
        let (page, offset) = tier.location(of: slot)
        let (base, fixedIndex) = tierSlot(page)
        return (base + offset, fixedIndex)
    }
}
