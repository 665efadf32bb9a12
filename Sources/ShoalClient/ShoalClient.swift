import ShoalCore
import ShoalObjectStore
import ShoalSys
import ShoalTransport

/// How a client finds and talks to the cluster.
public struct ClientConfig: Sendable {
    /// The workers, when no members file or etcd is given. The client asks them for the view
    /// they route by (MEMBERS) and follows it; workers that have none (standalone), or none
    /// answering at the start, make the list the cluster: each a member whose id is its address.
    public var workers: [Endpoint]
    /// Ask `workers` for the cluster's view (default); false: the list is the whole cluster.
    public var learnsView = true
    /// The cluster's members file (`MembersFile`), read again when it changes; it replaces
    /// `workers`.
    public var membersFile: String?
    /// etcd's endpoints (host:port), when the cluster's members register there (`EtcdMembers`):
    /// the client watches `etcdPrefix` and routes by what it sees. Replaces `workers`.
    public var etcdEndpoints: [String] = []
    public var etcdPrefix = "/shoal/default/"
    /// etcd's user and password (its authentication should be on: the view steers every read).
    public var etcdUser: String?
    public var etcdPassword: String?
    public var secret: [UInt8]
    /// Connections per worker; a large read uses them all, each with up to `pipelineDepth` READs
    /// in flight (and no more than the worker allows). Replies come back in any order.
    public var connectionsPerWorker = 8
    public var pipelineDepth = 4
    /// How long a reply (or a handshake) may take before its worker counts as unreachable.
    public var timeoutMillis: Int32 = 10_000
    /// How long a connect may take: short, so a dead worker costs little before its blocks go
    /// to their fallback.
    public var connectTimeoutMillis: Int32 = 1_000
    /// Stores the client may read directly, by store name, when a block's owner and fallback
    /// are both unreachable (none: such a read fails). At most `maxDirectReads` such GETs run
    /// at once in the process, so an outage of the cache does not stampede the store.
    public var directStores: [String: S3Credentials] = [:]
    public var maxDirectReads = 4
    /// How often the members file is looked at for changes, at most.
    public var membersRecheckSeconds: Double = 1
    /// How long a worker that failed stays marked down: its blocks go to their fallback meanwhile,
    /// and nothing waits on it; the first read after that tries it again.
    public var markDownSeconds: Double = 5
    /// Hedged reads: a READ unanswered for this long is sent to the block's other owner too, and
    /// the first good reply wins (nil: off, the default). Costs a second worker's work on the
    /// slowest reads, so set it near the latency you want to cut, well above the usual.
    public var hedgeAfterMillis: Int32?
    public var clientName = "shoal-client"
    /// Benchmarks only: count READ_NODATA replies from a worker running with `answerWithoutData`
    /// as answered (the buffer is left untouched) instead of failing them.
    public var acceptsNoData = false
    /// TLS on the data plane: the PEM file of the CA that signed the workers' certificates. Each
    /// worker's certificate must be valid for the address it is dialled at. nil: plain TCP, with
    /// every frame tagged under the session key instead.
    public var tlsCAFile: String?
    /// Benchmarks only: ask for frames without tags from a worker running with the switch
    /// `allowUntaggedFrames`, to measure what the tags cost. Never for service.
    public var untaggedFrames = false
    /// RDMA: workers write READ data straight into the caller's buffers through this device,
    /// where the worker serves RDMA too (nil: TCP only, the default). Any RDMA failure with a
    /// worker sends that worker's reads over TCP for `rdmaRetrySeconds`.
    public var rdma: ClientRDMASettings?
    public var rdmaRetrySeconds: Double = 30

    public init(workers: [Endpoint], secret: [UInt8]) {
        self.workers = workers
        self.secret = secret
    }
}

/// An object opened at one version: every read of it returns bytes of that version or fails.
public struct ShoalFile: Sendable, Equatable {
    public let object: ObjectRef
    public let version: ObjectVersion
    public let blockSize: UInt32
    /// The worker could not reach the store and gave the last version it knew.
    public let stale: Bool

    public init(object: ObjectRef, version: ObjectVersion, blockSize: UInt32, stale: Bool = false) {
        self.object = object
        self.version = version
        self.blockSize = blockSize
        self.stale = stale
    }

    public var size: UInt64 { version.size }

    /// The block of this version at `index`.
    public func block(_ index: UInt64) -> BlockKey {
        BlockKey(object: object, version: version, blockSize: blockSize, index: index)
    }

    /// The READ of `length` bytes at `offset`, cut at the end of its block (and of the object);
    /// nil past the end.
    public func readRequest(at offset: UInt64, length: UInt64) -> ReadRequest? {
        guard offset < size, let piece = BlockLayout(blockSize: UInt64(blockSize)).pieces(offset: offset, length: min(length, size - offset)).first
        else { return nil }
        return ReadRequest(block: block(piece.index), offset: piece.offsetInBlock, length: piece.length)
    }
}

/// The client core: synchronous and thread-free (blocking sockets and poll), so it is safe in a
/// process that forks. Routes each block to its owner, keeps connections per worker, and reads
/// large ranges as parallel, pipelined block requests straight into the caller's buffer.
extension ShoalFile {
    /// The file a worker's STAT_REPLY describes, refusing a block size outside the protocol's
    /// bounds or a version without an etag.
    init(_ object: ObjectRef, _ reply: StatReply, from worker: Endpoint) throws(ShoalError) {
        let bs = UInt64(reply.blockSize)
        guard bs >= BlockLayout.minBlockSize, bs <= BlockLayout.maxBlockSize else {
            throw ShoalError(.badRequest, "worker \(worker) reported a block size of \(bs) bytes, outside 64 KiB-16 MiB")
        }
        guard !reply.version.etag.isEmpty else { throw ShoalError(.internal, "worker \(worker) gave \(object) no version") }
        self.init(object: object, version: reply.version, blockSize: reply.blockSize, stale: reply.stale)
    }
}

public final class ShoalClient: @unchecked Sendable {
    public let config: ClientConfig
    /// One view of the cluster, as one call uses it: its members' addresses and ids by the
    /// index its placement names them by.
    final class Routing: Sendable {
        let view: MembershipView
        let slots: Placement
        let endpoints: [Endpoint]
        let ids: [String]

        init(view: MembershipView, slots: Placement) throws(ShoalError) {
            var endpoints: [Endpoint] = []
            for m in view.members {
                guard let e = Endpoint(m.address) else { throw ShoalError(.badRequest, "member '\(m.id)' has address '\(m.address)', not host:port") }
                endpoints.append(e)
            }
            self.view = view
            self.endpoints = endpoints
            ids = view.members.map(\.id)
            self.slots = slots
        }
    }

    private let lock = ConditionLock()
    private var routing: Routing
    /// Connections kept for later calls, by member id.
    private var idle: [String: [WorkerConnection]] = [:]
    /// Members that failed, by id, and until when (monotonic ns) they are left alone.
    private var downUntil: [String: UInt64] = [:]
    /// Background connects to members marked down, by id (`probeDown`), and when the next may start.
    private var probes: [String: ConnectProbe] = [:]
    private var nextProbe: [String: UInt64] = [:]
    private var _hedges = (sent: 0, won: 0)
    /// The RDMA device, opened on the first connection that may use it (or why it could not be),
    /// and the members whose reads go over TCP for now after an RDMA failure, until when.
    private var rdmaOpened: Result<ClientRDMA, RDMAError>?
    private var tcpOnlyUntil: [String: UInt64] = [:]
    private var rdmaOfParents: [ClientRDMA] = []
    /// The block size the workers cut objects into (from AUTH_OK or a STAT), once one said it.
    private var knownBlockSize: UInt32 = 0
    private let tls: TLSContext?
    /// Stores to read from when no worker can be (`directStores`).
    private let direct: [String: S3Store]
    /// The members file or etcd, when the client was given one.
    let members: (any MembershipSource)?

    public init(config: ClientConfig) throws(ShoalError) {
        guard !config.workers.isEmpty || config.membersFile != nil || !config.etcdEndpoints.isEmpty else {
            throw ShoalError(.badRequest, "no worker address given (e.g. 127.0.0.1:7070), no members file and no etcd endpoint")
        }
        guard !config.secret.isEmpty else { throw ShoalError(.badRequest, "no cluster secret given; workers refuse clients without it") }
        guard (1...1024).contains(config.connectionsPerWorker), (1...Int(WireLimits.maxInFlight)).contains(config.pipelineDepth) else {
            throw ShoalError(.badRequest, "connectionsPerWorker must be 1-1024 and pipelineDepth 1-\(WireLimits.maxInFlight) (got \(config.connectionsPerWorker) and \(config.pipelineDepth))")
        }
        guard config.timeoutMillis > 0, config.connectTimeoutMillis > 0 else {
            throw ShoalError(.badRequest, "timeoutMillis and connectTimeoutMillis must be more than 0")
        }
        for (name, seconds) in [("markDownSeconds", config.markDownSeconds), ("membersRecheckSeconds", config.membersRecheckSeconds)] {
            guard seconds.isFinite, seconds >= 0, seconds <= 86_400 else {
                throw ShoalError(.badRequest, "\(name) is \(seconds); it must be 0-86400 seconds")
            }
        }
        if let h = config.hedgeAfterMillis, h < 1 || h > config.timeoutMillis {
            throw ShoalError(.badRequest, "hedgeAfterMillis is \(h); it must be 1 ms up to timeoutMillis (\(config.timeoutMillis))")
        }
        guard config.maxDirectReads >= 1 else { throw ShoalError(.badRequest, "maxDirectReads must be at least 1") }
        self.config = config
        direct = config.directStores.reduce(into: [:]) { $0[$1.key] = S3Store(name: $1.key, credentials: $1.value, maxConcurrency: config.maxDirectReads) }
        if let ca = config.tlsCAFile {
            do { tls = try TLSContext.client(caFile: ca) } catch { throw ShoalError(.badRequest, error.message) }
        } else {
            tls = nil
        }
        if !config.etcdEndpoints.isEmpty {
            let etcd = EtcdMembers(client: try EtcdClient(endpoints: config.etcdEndpoints, user: config.etcdUser, password: config.etcdPassword), prefix: config.etcdPrefix)
            let (view, slots) = etcd.current(force: false)
            guard !view.members.isEmpty else {
                etcd.close()
                throw ShoalError(.connectionFailed, "\(etcd.name): no members" + (etcd.error.map { " (\($0))" } ?? " registered"))
            }
            members = etcd
            routing = try Routing(view: view, slots: slots)
        } else if let path = config.membersFile {
            let watcher = try MembersWatcher(path: path, recheckSeconds: config.membersRecheckSeconds)
            members = watcher
            let (view, slots) = watcher.current()
            routing = try Routing(view: view, slots: slots)
        } else if config.learnsView, let learned = WorkerViewSource.learn(seeds: config.workers, recheckSeconds: config.membersRecheckSeconds,
                                                                            connect: ShoalClient.connector(config, tls)) {
            members = learned
            let (view, slots) = learned.current(force: false)
            routing = try Routing(view: view, slots: slots)
        } else {
            members = nil
            let view = try MembershipView(epoch: 0, members: config.workers.map { Member(id: $0.description, address: $0.description) })
            routing = try Routing(view: view, slots: Placement(view: view))
        }
    }

    deinit {
        idle.values.joined().forEach { $0.close() }
        probes.values.forEach { $0.close() }
        members?.close()
    }

    // MARK: the view

    /// How a view source reaches a worker: a connection with this client's settings.
    static func connector(_ config: ClientConfig, _ tls: TLSContext?) -> WorkerViewSource.Connect {
        { endpoint throws(ShoalError) in
            try WorkerConnection(endpoint: endpoint, secret: config.secret, clientName: config.clientName, timeoutMillis: config.timeoutMillis,
                                 connectTimeoutMillis: config.connectTimeoutMillis, tls: tls, untaggedFrames: config.untaggedFrames)
        }
    }

    /// The view calls route by now (its source asked again if it changed, at most once a
    /// second).
    public var view: MembershipView { current().view }

    /// Why the view source's last answer was not taken (the view before it stays); nil when it was.
    public var viewError: String? { members?.error }

    /// The routing of the view in use; with `force`, the source is asked now.
    private func current(force: Bool = false) -> Routing {
        guard let members else { return lock.withLock { routing } }
        let (view, slots) = members.current(force: force)
        if let r = lock.withLock({ routing.slots === slots ? routing : nil }) { return r }
        // Every member's address was checked when the file was parsed.
        guard let next = try? Routing(view: view, slots: slots) else { return lock.withLock { routing } }
        lock.withLock { routing = next }
        return next
    }

    // MARK: connections

    private func connection(_ r: Routing, _ worker: Int) throws(ShoalError) -> WorkerConnection {
        try connectionAndAge(r, worker).0
    }

    /// A connection to `worker`, and whether it was just made (not taken from the pool).
    private func connectionAndAge(_ r: Routing, _ worker: Int) throws(ShoalError) -> (WorkerConnection, Bool) {
        let id = r.ids[worker]
        while let c = lock.withLock({ idle[id]?.popLast() }) {
            // A parent's connection in a forked child: the socket is shared with the parent and
            // its frame sequence too. Dropped (closing the child's copy of the descriptor only).
            if !c.isOwnedByThisProcess {
                c.close()
                continue
            }
            if c.endpoint == r.endpoints[worker] { return (c, false) }
            c.close()  // the member moved to another address
        }
        let c = try WorkerConnection(endpoint: r.endpoints[worker], secret: config.secret, clientName: config.clientName,
                                     timeoutMillis: config.timeoutMillis, connectTimeoutMillis: config.connectTimeoutMillis, tls: tls,
                                     untaggedFrames: config.untaggedFrames)
        c.acceptsNoData = config.acceptsNoData
        // A member whose view says it serves TCP only is not asked.
        if r.view.members[worker].rdma != false, let rdma = rdmaFor(id) {
            do { try c.attachRDMA(rdma) } catch {
                // This worker's reads go over TCP for a while; a connection the attempt broke is not used.
                rdma.count { $0.connectFailures += 1 }
                noteRDMAFailure(id)
                if c.isBroken {
                    c.close()
                    throw error
                }
            }
        }
        return (c, true)
    }

    // MARK: RDMA

    /// The device for a new connection to member `id` (opened by this process): nil when RDMA is
    /// off, the device cannot be opened, or `id` failed lately.
    private func rdmaFor(_ id: String) -> ClientRDMA? {
        guard let settings = config.rdma else { return nil }
        return lock.withLock { () -> ClientRDMA? in
            if let until = tcpOnlyUntil[id] {
                guard monotonicNanos() >= until else { return nil }
                tcpOnlyUntil[id] = nil
            }
            // A forked child (a DataLoader worker) opens the device anew: its parent's verbs
            // resources are not its to use.
            if case .success(let parents)? = rdmaOpened, !parents.isUsable {
                // Kept, never freed here: freeing it would tear down the parent's registrations
                // and queue pairs through the descriptors the child shares with it.
                rdmaOfParents.append(parents)
                rdmaOpened = nil
            }
            if rdmaOpened == nil { rdmaOpened = Result { () throws(RDMAError) in try ClientRDMA.open(settings) } }
            guard case .success(let rdma)? = rdmaOpened else { return nil }
            return rdma
        }
    }

    private func noteRDMAFailure(_ id: String) {
        let until = monotonicNanos() + UInt64(max(0, config.rdmaRetrySeconds) * 1e9)
        lock.withLock { tcpOnlyUntil[id] = until }
    }

    /// RDMA as this client uses it: the device's name (and whether it is the simulation), what
    /// it counted, or why the device could not be opened; nil when RDMA is off or not used yet.
    public var rdmaStatus: (device: String, simulated: Bool, counters: ClientRDMA.Counts)? {
        guard case .success(let rdma)? = lock.withLock({ rdmaOpened }) else { return nil }
        return (rdma.device.name, rdma.device.isSimulated, rdma.counters)
    }

    public var rdmaError: String? {
        guard case .failure(let e)? = lock.withLock({ rdmaOpened }) else { return nil }
        return e.message
    }

    /// Closes the pooled connections to member `id` (one of them broke: the others likely did too).
    private func dropIdle(_ id: String) {
        let stale = lock.withLock { idle.removeValue(forKey: id) ?? [] }
        stale.forEach { $0.close() }
    }

    /// Keeps `c` for the next call (up to `connectionsPerWorker` idle per worker, or `keep`: a
    /// warm's lanes, kept for its next chunk), or closes it.
    private func giveBack(_ c: WorkerConnection, _ id: String, keep: Int = 0) {
        // Its RDMA failed on the way: the worker's next connections use TCP for a while. One
        // whose queue pair is gone for any reason is not kept (the next one asks again).
        if c.rdmaFailed { noteRDMAFailure(id) }
        if c.isBroken || c.lostRDMA { c.close(); return }
        lock.withLock {
            if idle[id, default: []].count < max(keep, config.connectionsPerWorker) { idle[id, default: []].append(c); return }
            c.close()
        }
    }

    /// Hedged READs sent, and how many of them answered first.
    public var hedges: (sent: Int, won: Int) { lock.withLock { _hedges } }

    /// The workers marked down now (their addresses), for status and tests.
    public var downWorkers: [Endpoint] {
        let r = current()
        let now = monotonicNanos()
        let down = lock.withLock { Set(downUntil.filter { $0.value > now }.keys) }
        return r.ids.indices.filter { down.contains(r.ids[$0]) }.map { r.endpoints[$0] }
    }

    private func isDown(_ id: String) -> Bool {
        guard let until = lock.withLock({ downUntil[id] }) else { return false }
        return monotonicNanos() < until
    }

    /// Probes the members marked down without waiting on them: a connect started in one call is
    /// looked at in the next. One that connects comes back at once (its mark is cleared); one
    /// that refuses, or has not connected within `connectTimeoutMillis`, keeps its mark, renewed,
    /// so no call waits on it again while it stays away.
    private func probeDown(_ r: Routing) {
        let now = monotonicNanos()
        let interval = UInt64(min(1, max(0, config.markDownSeconds)) * 1e9)
        let connectNanos = UInt64(config.connectTimeoutMillis) * 1_000_000
        let start: [String] = lock.withLock {
            guard !downUntil.isEmpty else { return [] }
            var start: [String] = []
            for (id, until) in downUntil {
                if let probe = probes[id] {
                    let state = probe.state
                    if state == .connected {
                        downUntil[id] = nil
                        nextProbe[id] = nil
                    } else if state == .failed || elapsedNanos(from: probe.startedNanos, to: now) >= connectNanos {
                        downUntil[id] = max(until, now + UInt64(max(0, config.markDownSeconds) * 1e9))
                        nextProbe[id] = now + interval
                    } else {
                        continue
                    }
                    probe.close()
                    probes[id] = nil
                } else if now >= nextProbe[id, default: 0] {
                    start.append(id)
                }
            }
            return start
        }
        guard !start.isEmpty else { return }
        var started: [String: ConnectProbe] = [:]
        for id in start {
            guard let i = r.ids.firstIndex(of: id) else { continue }
            // A HELLO (plain TCP; with TLS the worker would want a TLS hello first, so a connect
            // alone is the probe): a worker that answers is alive, not just its kernel.
            var greeting: [UInt8] = []
            if tls == nil, let nonce = try? secureRandomBytes(MutualAuth.nonceSize) {
                var handshake = ClientHandshake(secret: config.secret, nonce: nonce, clientName: config.clientName + " (probe)",
                                                worker: r.endpoints[i].description, untaggedFrames: config.untaggedFrames)
                if case .send(let h, let body) = handshake.start() { greeting = h.bytes + body }
            }
            started[id] = ConnectProbe(r.endpoints[i], greeting: greeting)
        }
        lock.withLock {
            for id in start where started[id] == nil { downUntil[id] = nil }  // left the view
            for (id, probe) in started { probes[id]?.close(); probes[id] = probe }
        }
    }

    private func markDown(_ id: String) {
        let until = monotonicNanos() + UInt64(max(0, config.markDownSeconds) * 1e9)
        lock.withLock { downUntil[id] = until }
        dropIdle(id)
    }

    /// A failure that says the worker cannot be reached (rather than what it answered).
    private static func unreachable(_ error: ShoalError) -> Bool { error.code == .connectionFailed || error.code == .timeout }

    /// Where a block goes: its owner, or its rank-2 fallback while the owner is down (or failed
    /// in this call); nil when neither can be used. A call never goes back to a worker that
    /// failed in it, whatever its mark says by then.
    private func route(_ r: Routing, _ id: BlockID, avoiding failed: Set<Int> = []) -> Int? {
        let (owner, fallback) = r.slots.owners(of: id)
        return [owner, fallback].compactMap { $0 }.first { !failed.contains($0) && !isDown(r.ids[$0]) }
    }

    private func unroutable(_ r: Routing, _ id: BlockID, _ what: String) -> ShoalError {
        let (owner, fallback) = r.slots.owners(of: id)
        let names = [owner, fallback].compactMap { $0 }.map { r.endpoints[$0].description }.joined(separator: " and ")
        return ShoalError(.connectionFailed, "\(what): \(names.isEmpty ? "no worker owns it" : "its owner and fallback (\(names)) are unreachable")")
    }

    private func metadataOwner(_ r: Routing, _ object: ObjectRef) throws(ShoalError) -> Int {
        let id = object.placementID
        guard let w = route(r, id) else { throw unroutable(r, id, "the version of \(object) cannot be asked") }
        return w
    }

    /// The owner of a block, then its fallback.
    public func owners(of block: BlockKey) -> [Endpoint] {
        let r = current()
        let (owner, fallback) = r.slots.owners(of: block.placementID)
        return [owner, fallback].compactMap { $0 }.map { r.endpoints[$0] }
    }

    // MARK: API

    /// The object's size and etag as the cluster sees it (`revalidate` bypasses the worker's TTL).
    public func stat(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> ShoalFile {
        try object.validate()
        let r = current()
        probeDown(r)
        var worker = try metadataOwner(r, object)
        var failed = Set<Int>()
        while true {
            let answer: Result<StatReply, ShoalError>
            do { answer = try ask(r, worker) { c throws(ShoalError) in try c.stat(object, revalidate: revalidate) } } catch {
                // A worker that cannot be reached is marked down, and its fallback answers for it.
                guard ShoalClient.unreachable(error.error) else { throw error.error }
                markDown(r.ids[worker])
                failed.insert(worker)
                guard let next = route(r, object.placementID, avoiding: failed) else {
                    // No worker can say: the store itself, when the client may ask it.
                    guard let store = direct[object.store] else { throw error.error }
                    let version = try directly { () throws(ShoalError) in try store.head(bucket: object.bucket, key: object.key) }
                    return ShoalFile(object: object, version: version, blockSize: UInt32(BlockLayout.defaultBlockSize))
                }
                worker = next
                continue
            }
            return try ShoalFile(object, try answer.get(), from: r.endpoints[worker])
        }
    }

    /// A failure to reach a worker: `connected` when a connection was made and then broke.
    private struct Unreached: Error {
        var error: ShoalError
        var connected: Bool
    }

    /// One small request (STAT, LIST, a READ by name) on `worker`, on a connection with nothing
    /// in flight. Throws when the worker could not be reached or the connection broke (one that
    /// broke in transit is tried once more on a new one: the pooled ones are likely stale, after
    /// a worker restarted, and are dropped); what the worker answered (its reply, or an error of
    /// its own, which leaves the connection usable) is the result.
    private func ask<T>(_ r: Routing, _ worker: Int, _ body: (WorkerConnection) throws(ShoalError) -> T) throws(Unreached) -> Result<T, ShoalError> {
        var broken = false
        while true {
            let c: WorkerConnection
            do { c = try connection(r, worker) } catch { throw Unreached(error: error, connected: false) }
            do {
                let reply = try body(c)
                giveBack(c, r.ids[worker])
                return .success(reply)
            } catch {
                if c.isBroken {
                    c.close()
                    // Only a connection that failed to carry the exchange is retried; one the
                    // worker closed for a reason (an ERROR frame: a bad tag) is not.
                    guard !broken, ShoalClient.unreachable(error) else { throw Unreached(error: error, connected: true) }
                    broken = true
                    dropIdle(r.ids[worker])
                    continue
                }
                if error.code == .badRequest || error.code == .tampered { c.close() } else { giveBack(c, r.ids[worker]) }
                return .failure(error)
            }
        }
    }

    /// One page of the objects under `prefix` (sorted by key; `continuation` nil on the last
    /// page), listed by a worker with its store's credentials. The versions it gives can open
    /// objects with no STAT (`open(_:version:)`). Its errors say "cannot list s3://…: " first.
    public func list(store: String = "default", bucket: String, prefix: String, continuation: String? = nil) throws(ShoalError) -> ObjectListing {
        do throws(ShoalError) {
            return try listPage(store: store, bucket: bucket, prefix: prefix, continuation: continuation)
        } catch {
            let named = prefix.utf8.count <= WireLimits.maxKey ? prefix : prefix.prefix(64) + "…"
            let url = ObjectPrefix(store: store, bucket: bucket, prefix: named)
            throw ShoalError(error.code, "cannot list \(url): \(error.message)")
        }
    }

    private func listPage(store: String, bucket: String, prefix: String, continuation: String?) throws(ShoalError) -> ObjectListing {
        guard (1...WireLimits.maxStoreName).contains(store.utf8.count), (1...WireLimits.maxBucket).contains(bucket.utf8.count),
              prefix.utf8.count <= WireLimits.maxKey, (continuation?.utf8.count ?? 0) <= ListRequest.maxContinuation
        else {
            throw ShoalError(.badRequest, "the store name must be 1-\(WireLimits.maxStoreName) bytes, the bucket 1-\(WireLimits.maxBucket) and the prefix at most \(WireLimits.maxKey)")
        }
        let request = ListRequest(store: store, bucket: bucket, prefix: prefix, continuation: continuation)
        let r = current()
        probeDown(r)
        // Any worker can list; the one owning the prefix's name is asked first, so repeated
        // listings of one prefix go to one worker.
        let id = BlockID(hashing: Array("list:\(store)/\(bucket)/\(prefix)".utf8))
        var failed = Set<Int>()
        while true {
            guard let worker = route(r, id, avoiding: failed) ?? r.ids.indices.first(where: { !failed.contains($0) && !isDown(r.ids[$0]) }) else {
                throw ShoalError(.connectionFailed, "no worker can be reached")
            }
            let answer: Result<ObjectListing, ShoalError>
            do { answer = try ask(r, worker) { c throws(ShoalError) in try c.list(request) } } catch {
                guard ShoalClient.unreachable(error.error) || error.connected else { throw error.error }
                markDown(r.ids[worker])
                failed.insert(worker)
                continue
            }
            return try answer.get()
        }
    }

    /// Calls `each` with every object under `prefix` in key order, page after page, until it
    /// returns false; a store that gives the same continuation token twice stops the listing.
    public func forEachObject(store: String = "default", bucket: String, prefix: String,
                              _ each: (ObjectEntry) throws(ShoalError) -> Bool) throws(ShoalError) {
        var token: String?
        var seen = Set<String>()
        repeat {
            let page = try list(store: store, bucket: bucket, prefix: prefix, continuation: token)
            for e in page.entries where !(try each(e)) { return }
            token = page.continuation
            if let t = token, !seen.insert(t).inserted {
                throw ShoalError(.internal, "the listing of s3://\(bucket)/\(prefix) gave continuation token '\(t.prefix(64))' twice; stopped")
            }
        } while token != nil
    }

    /// Every object under `prefix`, following the pages.
    public func listAll(store: String = "default", bucket: String, prefix: String) throws(ShoalError) -> [ObjectEntry] {
        var out: [ObjectEntry] = []
        try forEachObject(store: store, bucket: bucket, prefix: prefix) { e throws(ShoalError) in
            out.append(e)
            return true
        }
        return out
    }

    /// Opens an object at a version the caller already knows (from a listing or a manifest):
    /// no round trip. A read finds out if the store has moved on (`preconditionFailed`).
    public func open(_ object: ObjectRef, version: ObjectVersion) throws(ShoalError) -> ShoalFile {
        try object.validate()
        guard !version.etag.isEmpty, version.etag.utf8.count <= WireLimits.maxEtag else {
            throw ShoalError(.badRequest, "\(object): a known version needs an etag of 1-\(WireLimits.maxEtag) bytes")
        }
        return ShoalFile(object: object, version: version, blockSize: try clusterBlockSize())
    }

    /// The block size the cluster cuts objects into, as a worker announces it when a connection
    /// is made (one is made if none was yet).
    private func clusterBlockSize() throws(ShoalError) -> UInt32 {
        if let bs = lock.withLock({ knownBlockSize == 0 ? nil : knownBlockSize }) { return bs }
        let r = current()
        var last: ShoalError?
        for w in r.ids.indices where !isDown(r.ids[w]) {
            let c: WorkerConnection
            do { c = try connection(r, w) } catch {
                last = error
                continue
            }
            let bs = c.blockSize
            giveBack(c, r.ids[w])
            guard UInt64(bs) >= BlockLayout.minBlockSize, UInt64(bs) <= BlockLayout.maxBlockSize else {
                throw ShoalError(.badRequest, "worker \(r.endpoints[w]) announced a block size of \(bs) bytes, outside 64 KiB-16 MiB")
            }
            lock.withLock { knownBlockSize = bs }
            return bs
        }
        throw last ?? ShoalError(.connectionFailed, "no worker can be reached to learn the cluster's block size")
    }

    /// Reads an object from its start knowing only its name: one round trip to the worker that
    /// holds its first block (placed with its metadata), which resolves the version and sends it
    /// with the bytes; no STAT first. The rest, when the object is longer than its first block
    /// and `buffer` wants more, is read as usual. Returns the file (its version) and the count.
    /// A worker that cannot be reached is routed around by the usual way (STAT, then READ).
    public func readObject(_ object: ObjectRef, into buffer: UnsafeMutableRawBufferPointer) throws(ShoalError) -> (ShoalFile, Int) {
        try object.validate()
        guard buffer.count > 0, let base = buffer.baseAddress else { return (try open(object), 0) }
        let bs = try clusterBlockSize()
        let r = current()
        probeDown(r)
        var first: (ShoalFile, Int)?
        if let w = route(r, object.placementID) {
            let length = min(buffer.count, Int(bs))
            var answer: Result<(StatReply, Int), ShoalError>?
            do {
                answer = try ask(r, w) { c throws(ShoalError) in
                    try c.readResolving(object, blockSize: bs, length: length, into: base, epoch: r.view.epoch)
                }
            } catch {
                // Unreachable: the usual way (STAT, then READ) routes around it.
                guard ShoalClient.unreachable(error.error) || error.connected else { throw error.error }
                markDown(r.ids[w])
            }
            switch answer {
            case .success(let (reply, n))?: first = (try ShoalFile(object, reply, from: r.endpoints[w]), n)
            // Routed by an old view: the usual way asks the view source again.
            case .failure(let error)? where error.code == .notOwner: break
            case .failure(let error)?: throw error
            case nil: break
            }
        }
        guard let (file, n) = first else {
            let file = try stat(object)
            return (file, try read(file, at: 0, into: buffer))
        }
        guard n < buffer.count, UInt64(n) < file.size else { return (file, n) }
        let more = try read(file, at: UInt64(n), into: UnsafeMutableRawBufferPointer(rebasing: buffer[n...]))
        return (file, n + more)
    }

    /// Opens an object at its current version.
    public func open(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> ShoalFile {
        try stat(object, revalidate: revalidate)
    }

    /// Reads up to `buffer.count` bytes at `offset` into `buffer`; returns the count (short at the end).
    public func read(_ file: ShoalFile, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ShoalError) -> Int {
        var ranges = [ReadRange(file: file, offset: offset, buffer: buffer)]
        try read(&ranges)
        return try ranges[0].result.get()
    }

    /// One range of a batched read (`read(_:)`): what to read, where to, and how it went.
    public struct ReadRange: @unchecked Sendable {
        public let file: ShoalFile
        public let offset: UInt64
        public let buffer: UnsafeMutableRawBufferPointer
        /// The bytes read (short at the object's end), or why the range failed.
        public var result: Result<Int, ShoalError> = .success(0)

        public init(file: ShoalFile, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) {
            self.file = file
            self.offset = offset
            self.buffer = buffer
        }
    }

    /// Reads many ranges of many objects at once: every block of every range goes to its owner
    /// in one poll loop, so small objects on different workers are fetched in parallel and a
    /// worker's share is pipelined on its connections. Each range gets its own result; this
    /// throws only when no range could be tried (the cluster cannot be reached).
    public func read(_ ranges: inout [ReadRange]) throws(ShoalError) {
        var parts: [Part] = []
        var lengths = [Int](repeating: 0, count: ranges.count)
        for (i, range) in ranges.enumerated() {
            let file = range.file
            guard range.offset < file.size, range.buffer.count > 0, let base = range.buffer.baseAddress else { continue }
            let length = min(UInt64(range.buffer.count), file.size - range.offset)
            lengths[i] = Int(length)
            let pieces = BlockLayout(blockSize: UInt64(file.blockSize)).pieces(offset: range.offset, length: length)
            for p in pieces {
                parts.append(Part(range: i, file: file, piece: p, into: base + Int(p.offsetInRange)))
            }
            // Read over RDMA in pieces: the whole buffer is registered once, not piece by piece.
            if pieces.count > 1, config.rdma != nil, case .success(let rdma)? = lock.withLock({ rdmaOpened }), rdma.isUsable {
                rdma.prepare(base, count: Int(length))
            }
        }
        var errors: [Int: ShoalError] = [:]
        var origins: [Int: BlockOrigin] = [:]
        try fetchRouted(parts, errors: &errors, origins: &origins)
        for i in ranges.indices { ranges[i].result = errors[i].map { .failure($0) } ?? .success(lengths[i]) }
    }

    /// Reads a whole range into a new array (convenience for small reads and tools).
    public func read(_ file: ShoalFile, offset: UInt64, length: Int) throws(ShoalError) -> [UInt8] {
        let n = Int(min(UInt64(length), file.size > offset ? file.size - offset : 0))
        var out = [UInt8](repeating: 0, count: n)
        guard n > 0 else { return out }
        let result = out.withUnsafeMutableBytes { p in Result { () throws(ShoalError) -> Int in try read(file, at: offset, into: p) } }
        return Array(out.prefix(try result.get()))
    }

    /// One block of an object at a version: what a warm fills or a probe asks about.
    public struct BlockOfFile: Sendable {
        public let file: ShoalFile
        public let index: UInt64

        public init(file: ShoalFile, index: UInt64) {
            self.file = file
            self.index = index
        }

        /// Bytes of the block.
        public var length: Int { Int(BlockLayout(blockSize: UInt64(file.blockSize)).blockLength(index: index, objectSize: file.size)) }
    }

    /// READs a warm keeps queued on each of its lanes (`warm`): one filling, one waiting, so the
    /// worker starts the next GET as one ends, with no round trip to the warm between.
    static let laneDepth = 2
    /// A warm's lanes on one worker at most: more connections than its fill threads and its
    /// store's fetch thread run GETs for would only wait there, and take places a worker has
    /// few of (`maxConnections`).
    static let maxLanesPerWorker = 64

    /// Makes sure each block is cached on its owner, with no data sent back: a fill-only READ per
    /// block, all owners at once, each one's share pipelined. Each block's result says where it
    /// came from (`cache`: held already, or filled by another request; `store`: fetched now;
    /// `peer`: from its previous owner), or why it failed. A worker that cannot be reached hands
    /// its blocks to their fallbacks. Throws only when no block could be tried.
    /// A worker fills one connection's blocks one at a time, each as the one before ends (a
    /// warm lane), so `inFlight` connections across the cluster are that many fills (store GETs)
    /// at once, with a couple of READs queued on each so that no GET waits on this process; the
    /// lanes go where the blocks left to fill are, at most `maxLanesPerWorker` on a worker. Nil:
    /// `connectionsPerWorker` lanes per worker.
    /// `answered` is told each block's result (by its index in `blocks`) as it comes.
    public func warm(_ blocks: [BlockOfFile], inFlight: Int? = nil,
                     answered: (Int, Result<BlockOrigin, ShoalError>) -> Void = { _, _ in }) throws(ShoalError) -> [Result<BlockOrigin, ShoalError>] {
        func origin(_ r: Result<BlockOrigin?, ShoalError>) -> Result<BlockOrigin, ShoalError> {
            r.flatMap { o in
                o.map { .success($0) } ?? .failure(ShoalError(.internal, "a worker answered a fill-only READ with data"))
            }
        }
        return try noData(blocks, flags: ReadRequest.fillOnlyFlag, lanes: inFlight) { i, r in answered(i, origin(r)) }
            .map(origin)
    }

    /// Whether each block is cached on its owner (true), or not (false): the owner's index answers;
    /// nothing is read, filled or sent.
    public func probe(_ blocks: [BlockOfFile]) throws(ShoalError) -> [Result<Bool, ShoalError>] {
        try noData(blocks, flags: ReadRequest.probeFlag).map { r in
            switch r {
            case .success: return .success(true)
            case .failure(let e) where e.code == .notFound: return .success(false)
            case .failure(let e): return .failure(e)
            }
        }
    }

    /// Where no-data parts "land" (nothing is written there: their length is 0).
    private nonisolated(unsafe) static let nowhere = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)

    private func noData(_ blocks: [BlockOfFile], flags: UInt16, lanes: Int? = nil,
                        answered: (Int, Result<BlockOrigin?, ShoalError>) -> Void = { _, _ in }) throws(ShoalError) -> [Result<BlockOrigin?, ShoalError>] {
        let parts = blocks.enumerated().map { i, b in
            Part(range: i, file: b.file, piece: BlockPiece(index: b.index, offsetInBlock: 0, length: 0, offsetInRange: 0), into: ShoalClient.nowhere, flags: flags)
        }
        var errors: [Int: ShoalError] = [:]
        var origins: [Int: BlockOrigin] = [:]
        try fetchRouted(parts, errors: &errors, origins: &origins, lanes: lanes, answered: answered)
        return blocks.indices.map { i in errors[i].map { .failure($0) } ?? .success(origins[i]) }
    }

    /// One piece of a read: a range of one block of a file, where its bytes go, and which range
    /// of the batch it is of.
    struct Part {
        let range: Int
        let file: ShoalFile
        let piece: BlockPiece
        let into: UnsafeMutableRawPointer
        /// Its READ, made (key encoded and hashed) once; the epoch is set when it is sent.
        let request: ReadRequest
        /// Where its block is placed (`BlockKey.placementID`).
        let id: BlockID

        init(range: Int, file: ShoalFile, piece: BlockPiece, into: UnsafeMutableRawPointer, flags: UInt16 = 0) {
            self.range = range
            self.file = file
            self.piece = piece
            self.into = into
            request = ReadRequest(block: file.block(piece.index), offset: piece.offsetInBlock, length: piece.length, flags: flags)
            id = request.placementID
        }

        /// A fill-only or probe READ: answered without data, never read from the store here.
        var isNoData: Bool { request.isFillOnly || request.isProbe }
    }

    /// One connection of a read: its worker and the parts in flight on it, by request id.
    private final class Lane {
        let worker: Int
        let connection: WorkerConnection
        /// Made for this read, not taken from the pool.
        let fresh: Bool
        var inFlight: [UInt32: Int] = [:]
        /// When each READ in flight was sent (for hedging).
        var sentAt: [UInt32: UInt64] = [:]
        var open = true

        init(worker: Int, connection: WorkerConnection, fresh: Bool) {
            self.worker = worker
            self.connection = connection
            self.fresh = fresh
        }
    }

    /// Reads every block's piece from its owner, all owners at once: each worker's pieces over
    /// up to `connectionsPerWorker` connections, all of them in one poll set. Each connection
    /// keeps up to `pipelineDepth` READs in flight and gets the next piece of its worker as soon
    /// as one is answered, so neither a slow fill nor a slow worker stalls the rest. Every reply
    /// lands straight in its place in the caller's buffer.
    ///
    /// A worker that cannot be reached (no connection, or nothing from it for `timeoutMillis`
    /// while it has READs in flight) is marked down and its pieces, sent or not, go to their
    /// fallbacks: it costs this read one timeout, and later reads none. A connection that breaks
    /// (the worker may have closed it: a store that failed in the middle of a reply) is replaced
    /// and its pieces sent again, once each. With `hedgeAfterMillis`, a READ unanswered that long
    /// is sent to the block's other owner too; the first good reply wins, and the other's is
    /// pointed at scratch memory so it never lands in the caller's buffer.
    /// A worker's answer (an error of its own, a bad checksum) fails the range its piece is of,
    /// in `errors` by range; the others go on.
    /// Returns the parts their worker refused as not its own in a newer view (`not_owner`).
    /// Fetches `parts` by the current view; those refused as routed by an old one go again by
    /// the view source's latest. Errors and (for fill-only and probe parts) where each block came
    /// from, by range.
    /// `lanes`: warm lanes (`warm`), that many connections across the cluster. `answered` is told
    /// each no-data part's result (its range is its own) as it is answered.
    private func fetchRouted(_ parts: [Part], errors: inout [Int: ShoalError], origins: inout [Int: BlockOrigin],
                             lanes: Int? = nil, answered: (Int, Result<BlockOrigin?, ShoalError>) -> Void = { _, _ in }) throws(ShoalError) {
        guard !parts.isEmpty else { return }
        let lanes = lanes.map { max(1, $0) }
        let routing = current()
        probeDown(routing)
        let misrouted = try fetch(routing, parts, errors: &errors, origins: &origins, laneBudget: lanes, answered: answered)
        guard !misrouted.isEmpty else { return }
        // Routed by an old view: ask the view source now and send them where it says.
        let r = current(force: true)
        for p in try fetch(r, misrouted, errors: &errors, origins: &origins, laneBudget: lanes, answered: answered) where errors[p.range] == nil {
            let e = ShoalError(.notOwner, "workers refuse blocks of \(p.file.object) as not theirs even in view epoch \(r.view.epoch): \(members?.name ?? "the view source") and the workers disagree")
            errors[p.range] = e
            answered(p.range, .failure(e))
        }
    }

    /// Reads the parts (see above). With `laneBudget` (a warm's lanes: each connection's fills
    /// run one at a time on its worker), that many connections in all, each with up to
    /// `ShoalClient.laneDepth` READs: a lane opens on the worker with the most blocks left per
    /// lane, among those whose queue its lanes cannot take, and one with nothing left to send
    /// or wait for is given back, so the budget follows the blocks left to the last of them.
    private func fetch(_ r: Routing, _ parts: [Part], errors: inout [Int: ShoalError], origins: inout [Int: BlockOrigin],
                       laneBudget: Int? = nil, answered: (Int, Result<BlockOrigin?, ShoalError>) -> Void = { _, _ in }) throws(ShoalError) -> [Part] {
        let lanesPerWorker = config.connectionsPerWorker
        let pipelineDepth = laneBudget == nil ? config.pipelineDepth : min(config.pipelineDepth, ShoalClient.laneDepth)
        let workers = r.endpoints
        // Idle lanes kept per worker for the warm's next chunk: about its share of the budget.
        let keep = laneBudget.map { ($0 + workers.count - 1) / max(1, workers.count) + 1 } ?? 0
        // Queues and sets hold part numbers.
        var queues = Array(repeating: FIFOQueue<Int>(), count: workers.count)
        var lanes: [Lane] = []
        var resent = Set<Int>()
        var failed = Set<Int>()
        var misrouted: [Part] = []
        /// Parts answered (by either copy, when hedged), and parts sent twice.
        var done = Set<Int>()
        var hedged = Set<Int>()
        var scratch: UnsafeMutableRawPointer?
        /// Per worker: when it last answered, or was first waited on.
        var progress = Array(repeating: UInt64(0), count: workers.count)
        let timeoutNanos = UInt64(config.timeoutMillis) * 1_000_000
        let hedgeNanos = config.hedgeAfterMillis.map { UInt64(max(1, $0)) * 1_000_000 }
        defer {
            // A lane still waiting on a hedge's loser is closed: its reply must find no one.
            for lane in lanes where lane.open {
                if lane.inFlight.isEmpty { giveBack(lane.connection, r.ids[lane.worker], keep: keep) } else { lane.connection.close() }
            }
            scratch?.deallocate()
        }

        func assign(_ p: Int, cause: ShoalError? = nil) throws(ShoalError) {
            let part = parts[p]
            guard let w = route(r, part.id, avoiding: failed) else {
                let error = cause ?? unroutable(r, part.id, "block \(part.piece.index) of \(part.file.object) cannot be read")
                // No worker can serve it: from the store itself, when the client may read it; else
                // its range fails and the others go on.
                if let store = direct[part.file.object.store], !part.isNoData {
                    do { try readDirectly(store, part) } catch where error.code != .storeUnavailable && error.code != .timeout {
                        errors[part.range] = errors[part.range] ?? error
                    }
                } else {
                    errors[part.range] = errors[part.range] ?? error
                }
                finish(p)
                return
            }
            queues[w].append(p)
        }
        /// Another copy of a hedged piece is queued or in flight (so this one may be let go).
        func hasOtherCopy(_ p: Int, notOn lane: Lane?) -> Bool {
            guard hedged.contains(p) else { return false }
            if queues.contains(where: { $0.contains(p) }) { return true }
            return lanes.contains { $0 !== lane && $0.open && $0.inFlight.values.contains(p) }
        }
        /// `p` is answered (`told`: its result is final; a misrouted one goes again): a hedged copy
        /// still out is pointed at scratch memory or unqueued.
        func finish(_ p: Int, told: Bool = true) {
            guard done.insert(p).inserted else { return }
            remaining -= 1
            if told && parts[p].isNoData {
                let range = parts[p].range
                answered(range, errors[range].map { .failure($0) } ?? .success(origins[range]))
            }
            guard hedged.contains(p) else { return }
            for w in queues.indices { queues[w].removeAll { $0 == p } }
            for lane in lanes where lane.open {
                for (id, q) in lane.inFlight where q == p {
                    if scratch == nil { scratch = .allocate(byteCount: Int(BlockLayout.maxBlockSize), alignment: 64) }
                    lane.connection.redirect(id, to: scratch!)
                }
            }
        }
        /// A connection broke: its pieces go again on a new one (to the same worker), once each
        /// (a pooled connection that had gone stale does not count), and the pool is dropped.
        func broke(_ lane: Lane, _ error: ShoalError) throws(ShoalError) {
            lane.open = false
            lane.connection.close()
            dropIdle(r.ids[lane.worker])
            for p in lane.inFlight.values where !done.contains(p) {
                if hasOtherCopy(p, notOn: lane) { continue }
                guard !lane.fresh || resent.insert(p).inserted else {
                    // Broke twice: its range fails; the others go on.
                    errors[parts[p].range] = errors[parts[p].range] ?? error
                    finish(p)
                    continue
                }
                queues[lane.worker].pushFront(p)
            }
            lane.inFlight.removeAll()
            lane.sentAt.removeAll()
        }
        /// Marks `worker` down and hands its pieces (queued, and in flight on its connections) on.
        func fail(_ worker: Int, _ cause: ShoalError) throws(ShoalError) {
            markDown(r.ids[worker])
            failed.insert(worker)
            var orphans = Array(queues[worker].elements)
            queues[worker].removeAll()
            for lane in lanes where lane.worker == worker && lane.open {
                lane.open = false
                lane.connection.close()
                orphans += lane.inFlight.values
                lane.inFlight.removeAll()
                lane.sentAt.removeAll()
            }
            for p in orphans where !done.contains(p) && !hasOtherCopy(p, notOn: nil) { try assign(p, cause: cause) }
        }
        /// Opens connections to workers with pieces waiting and none open.
        func openLanes() throws(ShoalError) {
            if let laneBudget { return try openWarmLanes(laneBudget) }
            var w = 0
            while w < workers.count {
                defer { w += 1 }
                guard !queues[w].isEmpty, !lanes.contains(where: { $0.worker == w && $0.open }) else { continue }
                for _ in 0..<min(lanesPerWorker, queues[w].count) {
                    do {
                        let (c, fresh) = try connectionAndAge(r, w)
                        lanes.append(Lane(worker: w, connection: c, fresh: fresh))
                    } catch where ShoalClient.unreachable(error) {
                        try fail(w, error)
                        w = -1  // its pieces went elsewhere: look at every worker again
                        break
                    }
                }
            }
        }
        /// Warm lanes (see above): gives back the idle ones, then opens up to `budget`.
        func openWarmLanes(_ budget: Int) throws(ShoalError) {
            for lane in lanes where lane.open && lane.inFlight.isEmpty && queues[lane.worker].isEmpty {
                lane.open = false
                giveBack(lane.connection, r.ids[lane.worker], keep: keep)
            }
            var open = Array(repeating: 0, count: workers.count)
            var room = Array(repeating: 0, count: workers.count)
            var sent = Array(repeating: 0, count: workers.count)
            for lane in lanes where lane.open {
                open[lane.worker] += 1
                room[lane.worker] += max(0, depth(lane) - lane.inFlight.count)
                sent[lane.worker] += lane.inFlight.count
            }
            var total = open.reduce(0, +)
            while total < budget {
                var best: (worker: Int, perLane: Double)?
                for w in workers.indices where queues[w].count > room[w] && open[w] < ShoalClient.maxLanesPerWorker {
                    let perLane = Double(queues[w].count + sent[w]) / Double(open[w] + 1)
                    if perLane > best?.perLane ?? -1 { best = (w, perLane) }
                }
                guard let w = best?.worker else { return }
                do {
                    let (c, fresh) = try connectionAndAge(r, w)
                    let lane = Lane(worker: w, connection: c, fresh: fresh)
                    lanes.append(lane)
                    open[w] += 1
                    total += 1
                    // Fed now: its READs go out while the next lanes connect.
                    try feed(lane)
                    room[w] += depth(lane) - lane.inFlight.count
                } catch where ShoalClient.unreachable(error) {
                    // Its pieces went elsewhere: count again.
                    try fail(w, error)
                    return try openWarmLanes(budget)
                }
            }
        }
        func depth(_ lane: Lane) -> Int { max(1, min(pipelineDepth, lane.connection.maxInFlight)) }
        /// Keeps the lane's pipeline full from its worker's queue.
        func feed(_ lane: Lane) throws(ShoalError) {
            let depth = depth(lane)
            while lane.open, lane.inFlight.count < depth, let p = queues[lane.worker].first {
                _ = queues[lane.worker].take()
                let part = parts[p]
                var request = part.request
                request.epoch = r.view.epoch
                do {
                    let now = monotonicNanos()
                    if !lanes.contains(where: { $0.worker == lane.worker && $0.open && !$0.inFlight.isEmpty }) { progress[lane.worker] = now }
                    let id = try lane.connection.sendRead(request, into: part.into, length: Int(part.piece.length))
                    lane.inFlight[id] = p
                    lane.sentAt[id] = now
                } catch where ShoalClient.unreachable(error) {
                    queues[lane.worker].pushFront(p)
                    try broke(lane, error)
                }
            }
        }
        /// Sends READs unanswered for `hedgeAfterMillis` to their block's other owner too; when
        /// the next one is due (nil: none).
        func hedge(_ now: UInt64) -> (queued: Bool, next: UInt64?) {
            guard let hedgeNanos else { return (false, nil) }
            var next: UInt64?
            var queued = false
            for lane in lanes where lane.open {
                for (id, sent) in lane.sentAt {
                    guard let p = lane.inFlight[id], !hedged.contains(p), !parts[p].isNoData else { continue }
                    guard elapsedNanos(from: sent, to: now) >= hedgeNanos else { next = min(next ?? .max, sent + hedgeNanos); continue }
                    guard let other = route(r, parts[p].id, avoiding: failed.union([lane.worker])), other != lane.worker else { continue }
                    hedged.insert(p)
                    queues[other].append(p)
                    queued = true
                    lock.withLock { _hedges.sent += 1 }
                }
            }
            return (queued, next)
        }

        var remaining = parts.count
        do throws(ShoalError) {
            for p in parts.indices { try assign(p) }
            while remaining > 0 {
                try openLanes()
                for lane in lanes where lane.open { try feed(lane) }
                let busy = lanes.filter { $0.open && !$0.inFlight.isEmpty }
                guard !busy.isEmpty else { continue }
                // One connection waiting (and nothing to hedge), or replies already received: no
                // poll needed.
                var ready = busy.count == 1 && hedgeNanos == nil ? busy : busy.filter { $0.connection.hasBufferedReply }
                if ready.isEmpty {
                    var now = monotonicNanos()
                    let busyWorkers = Set(busy.map(\.worker))
                    var wake = busyWorkers.map { progress[$0] + timeoutNanos }.min()!
                    let (queued, due) = hedge(now)
                    if queued { continue }  // send the hedges before waiting
                    if let due { wake = min(wake, due) }
                    let waitMillis = Int32(clamping: wake > now ? (wake - now + 999_999) / 1_000_000 : 0)
                    let got = try readable(busy.map { $0.connection.socket }, timeoutMillis: max(1, waitMillis))
                    if got.isEmpty {
                        // Nothing in time from a worker waited on for `timeoutMillis`: unreachable.
                        now = monotonicNanos()
                        for w in busyWorkers where now >= progress[w] + timeoutNanos {
                            try fail(w, ShoalError(.timeout, "worker \(workers[w]) sent nothing in \(config.timeoutMillis) ms"))
                        }
                        continue
                    }
                    ready = got.map { busy[$0] }
                }
                for lane in ready where lane.open {
                    do {
                        let (id, result) = try lane.connection.receiveNext()
                        progress[lane.worker] = monotonicNanos()
                        lane.sentAt.removeValue(forKey: id)
                        guard let piece = lane.inFlight.removeValue(forKey: id), !done.contains(piece) else { continue }
                        switch result {
                        case .success(let origin):
                            if let origin { origins[parts[piece].range] = origin }
                            if hedged.contains(piece), r.slots.owners(of: parts[piece].id).owner != lane.worker {
                                lock.withLock { _hedges.won += 1 }
                            }
                            finish(piece)
                        case .failure(let error):
                            // A status reply (or a bad checksum, read in full) leaves the connection
                            // in step; a hedged piece waits for its other copy.
                            if hasOtherCopy(piece, notOn: lane) { continue }
                            if error.code == .shuttingDown {
                                // The worker is leaving: its pieces go to their fallbacks now,
                                // not after the view says so.
                                try fail(lane.worker, error)
                                try assign(piece, cause: error)
                                continue
                            }
                            if error.code == .notOwner {
                                misrouted.append(parts[piece])
                                finish(piece, told: false)
                                continue
                            } else if errors[parts[piece].range] == nil {
                                errors[parts[piece].range] = error
                            }
                            finish(piece)
                        }
                    } catch where error.code == .timeout {
                        try fail(lane.worker, error)
                    } catch where error.code == .connectionFailed {
                        try broke(lane, error)
                    }
                }
            }
        } catch {
            for lane in lanes where lane.open {
                lane.open = false
                lane.connection.close()
            }
            throw error
        }
        return misrouted
    }

    /// A piece straight from the store (its owner and fallback are unreachable): a ranged GET
    /// of this version into the caller's buffer, at most `maxDirectReads` at once per process.
    private func readDirectly(_ store: S3Store, _ part: Part) throws(ShoalError) {
        let (file, p) = (part.file, part.piece)
        let offset = file.block(p.index).objectOffset + UInt64(p.offsetInBlock)
        let got = try directly { () throws(ShoalError) -> StoreRead in
            try store.get(bucket: file.object.bucket, key: file.object.key, offset: offset, length: Int(p.length),
                          ifMatch: file.version.etag, into: part.into)
        }
        guard got.count == Int(p.length), got.objectSize == file.size else {
            throw ShoalError(.preconditionFailed, "\(file.object) changed: the store has \(got.objectSize) bytes where version \(file.version.etag) has \(file.size)")
        }
    }

    /// Runs `body` as one of the process's direct store requests (every client of the process
    /// counts), waiting for a place.
    private func directly<T>(_ body: () throws(ShoalError) -> T) throws(ShoalError) -> T {
        DirectReads.shared.enter(limit: config.maxDirectReads)
        defer { DirectReads.shared.leave() }
        return try body()
    }

    /// The sockets with something to read, by index; empty when none had anything in time.
    private func readable(_ sockets: [TCPSocket], timeoutMillis: Int32) throws(ShoalError) -> [Int] {
        do { return try TCPSocket.readable(sockets, timeoutMillis: timeoutMillis) } catch {
            throw ShoalError(.connectionFailed, "poll on worker connections failed: \(error)")
        }
    }
}

/// The direct store requests running in this process, from every client.
final class DirectReads: @unchecked Sendable {
    static let shared = DirectReads()
    private let lock = ConditionLock()
    private var running = 0

    func enter(limit: Int) {
        lock.lock()
        while running >= limit { _ = lock.wait() }
        running += 1
        lock.unlock()
    }

    func leave() {
        lock.withLock { running -= 1 }
        lock.signal()
    }
}
