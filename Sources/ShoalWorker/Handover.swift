import Logging
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalStore
import ShoalTransport
#if canImport(Glibc)
import Glibc
#endif

/// Hand-over after a view change: for `windowNanos` after the view this worker routes by
/// changes, a block it now owns and does not hold is asked of the member that owned it in the
/// view before (a cached-only READ over the data protocol, with the cluster secret) before the
/// store. A worker that joined, or came back, thus takes the blocks that were filled elsewhere
/// meanwhile instead of filling them again; a draining one gives its blocks away as they are
/// read. A previous owner that does not answer is left alone for a while; any failure or a
/// miss there goes on to the store as before, so hand-over can only save GETs, never fail a
/// read. The first view this worker sees counts as following the same view without it.
final class Handover: @unchecked Sendable {
    let source: any MembershipSource
    let myID: String
    let secret: [UInt8]
    let windowNanos: UInt64
    let logger: Logger
    private let lock = ConditionLock()
    /// The placement in use and the one before it, and when it changed.
    private var current: Placement?
    private var previous: Placement?
    private var changedAt: UInt64 = 0
    private var idle: [String: [WorkerConnection]] = [:]
    private var downUntil: [String: UInt64] = [:]
    /// Previous owners that answered only misses lately are asked for a sample of the blocks.
    private var sampler = PeerAskSampler()
    /// The blocks this worker cached most recently (a ring of `journalCapacity`), newest last:
    /// what it pushes to their new owners after a view change.
    private var recent: [(key: BlockKey, id: BlockID)] = []
    private var recentNext = 0
    let journalCapacity: Int
    /// Blocks handed on per second at most (each a fill-only READ to the new owner, which then
    /// takes the block from here); 0: none pushed.
    let pushRate: Double
    let cache: BlockCache?
    let metrics: WorkerMetrics?
    /// The worker's RDMA device with its buffer pool registered: blocks taken from a previous
    /// owner that serves RDMA are written by it straight into the lease (nil: TCP).
    private var rdma: ClientRDMA?
    private var pushGeneration = 0
    private var pushing = false
    private var closed = false

    init(source: any MembershipSource, myID: String, secret: [UInt8], windowSeconds: Double, logger: Logger,
         cache: BlockCache? = nil, metrics: WorkerMetrics? = nil, pushRate: Double = 0, journalCapacity: Int = 65_536) {
        self.source = source
        self.myID = myID
        self.secret = secret
        windowNanos = UInt64(min(max(0, windowSeconds), 1e9) * 1e9)
        self.logger = logger
        self.cache = cache
        self.metrics = metrics
        self.pushRate = pushRate
        self.journalCapacity = journalCapacity
    }

    func useRDMA(_ rdma: ClientRDMA) { lock.withLock { self.rdma = rdma } }

    /// Notes a block just written to this worker's cache.
    func journal(_ key: BlockKey, _ id: BlockID) {
        guard pushRate > 0 else { return }
        lock.withLock {
            if recent.count < journalCapacity {
                recent.append((key, id))
            } else {
                recent[recentNext] = (key, id)
                recentNext = (recentNext + 1) % journalCapacity
            }
        }
    }

    /// After a view change: the journal's blocks whose owner is now another member, newest first,
    /// each handed on by a fill-only READ to that member (which takes it from here, as for any
    /// miss after a change), at most `pushRate` a second, on a thread of its own. A later change
    /// starts the pass again under the new view.
    private func startPush() {
        guard pushRate > 0 else { return }
        let (generation, start) = lock.withLock { () -> (Int, Bool) in
            pushGeneration += 1
            defer { pushing = true }
            return (pushGeneration, !pushing)
        }
        guard start else { return }
        try? OSThread.spawn(name: "shoal-handover-push") { [self] in
            var generation = generation
            while true {
                push(generation)
                let next = lock.withLock { () -> Int? in
                    if closed || pushGeneration == generation { pushing = false; return nil }
                    return pushGeneration
                }
                guard let next else { return }
                generation = next
            }
        }
    }

    private func push(_ generation: Int) {
        let (entries, placement, previous) = lock.withLock { () -> ([(key: BlockKey, id: BlockID)], Placement?, Placement?) in
            (Array(recent[recentNext...] + recent[..<recentNext]).reversed(), current, self.previous)
        }
        guard let placement, let previous, let me = placement.view.index(of: myID), let wasMe = previous.view.index(of: myID) else { return }
        let interval = UInt64(min(1e9 / pushRate, 3_600e9))  // at least one an hour
        var connections: [Int: WorkerConnection] = [:]
        defer { connections.values.forEach { $0.close() } }
        var failed = Set<Int>()
        var pushed = 0
        for entry in entries {
            if lock.withLock({ closed || pushGeneration != generation }) { break }
            // Only what was this worker's and is now another's: that one asks here for it.
            let placed = entry.key.placementID
            guard previous.owners(of: placed).owner == wasMe, let owner = placement.owners(of: placed).owner, owner != me,
                  !failed.contains(owner), cache?.contains(entry.id) ?? false else { continue }
            let started = monotonicNanos()
            do throws(ShoalError) {
                if connections[owner] == nil {
                    guard let endpoint = Endpoint(placement.view.members[owner].address) else { continue }
                    let c = try WorkerConnection(endpoint: endpoint, secret: secret, clientName: "shoal-worker \(myID) (hand-over)",
                                                 timeoutMillis: 30_000, connectTimeoutMillis: 500)
                    c.acceptsNoData = true
                    connections[owner] = c
                }
                let c = connections[owner]!
                var none: UInt8 = 0
                let request = ReadRequest(block: entry.key, offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag | ReadRequest.pushFlag,
                                          epoch: placement.view.epoch)
                let id = try withUnsafeMutableBytes(of: &none) { p throws(ShoalError) in try c.sendRead(request, into: p.baseAddress!, length: 0) }
                try c.receiveRead(id: id)
                pushed += 1
                metrics?.handoverPushed.increment()
            } catch {
                if connections[owner]?.isBroken ?? true {
                    connections[owner]?.close()
                    connections[owner] = nil
                    failed.insert(owner)
                    logger.info("cannot hand blocks over to their new owner; they will come from the store", metadata: [
                        "member": "\(placement.view.members[owner].id)", "error": "\(error.message)",
                    ])
                }
            }
            let spent = elapsedNanos(from: started, to: monotonicNanos())
            if spent < interval {
                var pause = timespec(tv_sec: Int((interval - spent) / 1_000_000_000), tv_nsec: Int((interval - spent) % 1_000_000_000))
                nanosleep(&pause, nil)
            }
        }
        if pushed > 0 { logger.info("handed blocks over to their new owners", metadata: ["blocks": "\(pushed)", "epoch": "\(placement.view.epoch)"]) }
    }

    /// Takes the source's view if it changed (the one it replaces becomes the previous). Called
    /// on every change etcd reports and on every READ checked against the view, so that the
    /// previous view is the one just before, not the last one a miss happened to see.
    func observe() {
        let (view, placement) = source.current(force: false)
        observe(view, placement)
    }

    func observe(_ view: MembershipView, _ placement: Placement) {
        let changed = lock.withLock { () -> Bool in
            // Views come in from several threads: only a newer one replaces the one in use.
            guard current !== placement, current.map({ placement.view.epoch > $0.view.epoch }) ?? true else { return false }
            if let current, current.view.placesLike(view) {
                // Nothing moved (a member's record changed, not who owns what): the view before
                // stays the one blocks are taken from, for the rest of its window.
                self.current = placement
                return false
            }
            if let current {
                previous = current
            } else if view.index(of: myID) != nil, let without = try? MembershipView(epoch: 0, members: view.members.filter { $0.id != myID }) {
                // The first view has this worker in it: it joined, or came back, just now.
                previous = Placement(view: without)
            }
            let first = current == nil
            current = placement
            changedAt = monotonicNanos()
            sampler.reset()
            return !first
        }
        if changed { startPush() }
    }

    /// The member that owned block `id` in the previous view, when it is not this worker, the
    /// view changed less than the window ago, and it is not marked down.
    func previousOwner(of id: BlockID) -> (id: String, endpoint: Endpoint)? {
        guard windowNanos > 0 else { return nil }
        observe()
        let now = monotonicNanos()
        return lock.withLock { () -> (String, Endpoint)? in
            guard let previous, elapsedNanos(from: changedAt, to: now) < windowNanos, let owner = previous.owners(of: id).owner else { return nil }
            let member = previous.view.members[owner]
            guard member.id != myID, downUntil[member.id].map({ $0 <= now }) ?? true, let endpoint = Endpoint(member.address) else { return nil }
            // Its address now, if it moved.
            if let i = current?.view.index(of: member.id), let moved = Endpoint(current!.view.members[i].address) { return (member.id, moved) }
            return (member.id, endpoint)
        }
    }

    /// Asks the previous owner for the whole block `key` into `data` (`length` bytes, CRC32C
    /// checked on the way); whether it had it.
    /// `epoch` is the view the READ was routed by: one newer than this worker's makes it ask its
    /// source now (the READ may be the first news of a view that put the block here). `pushed`:
    /// the previous owner pushed the block here (it holds it), so it is asked whatever it answered lately.
    func fetch(_ key: BlockKey, id: BlockID, epoch: UInt64, length: Int, into data: UnsafeMutableRawPointer, metrics: WorkerMetrics,
               pushed: Bool = false) -> Bool {
        guard windowNanos > 0 else { return false }
        if epoch > lock.withLock({ current?.view.epoch ?? 0 }) {
            let (view, placement) = source.current(force: true)
            observe(view, placement)
        }
        guard let (peer, endpoint) = previousOwner(of: key.placementID) else {
            logger.debug("hand-over: no previous owner to ask", metadata: ["block": "\(key)", "epoch": "\(epoch)",
                "current": "\(lock.withLock { current?.view.epoch ?? 0 })", "previous": "\(lock.withLock { previous?.view.epoch ?? 0 })"])
            return false
        }
        // A previous owner that held none of the last misses asked of it (a cold dataset) is
        // asked for a sample only: the round trips would cost more than its rare hits save.
        guard pushed || lock.withLock({ sampler.shouldAsk(peer) }) else {
            metrics.handoverSkipped.increment()
            return false
        }
        metrics.handoverAsked.increment()
        let reused = lock.withLock { idle[peer]?.popLast() }
        let connection: WorkerConnection
        if let reused, reused.endpoint == endpoint {
            connection = reused
        } else {
            reused?.close()
            do {
                connection = try WorkerConnection(endpoint: endpoint, secret: secret, clientName: "shoal-worker \(myID)", timeoutMillis: 2_000,
                                                  connectTimeoutMillis: 250)
            } catch {
                markDown(peer, error)
                return false
            }
            if let rdma = lock.withLock({ rdma }) {
                // Over RDMA where the previous owner serves it; TCP where it does not.
                do { try connection.attachRDMA(rdma) } catch where connection.isBroken {
                    connection.close()
                    markDown(peer, error)
                    return false
                } catch {}
            }
        }
        let request = ReadRequest(block: key, offset: 0, length: UInt32(length), flags: ReadRequest.cachedOnlyFlag)
        do {
            let rid = try connection.sendRead(request, into: data, length: length)
            try connection.receiveRead(id: rid)
        } catch {
            logger.debug("hand-over: the previous owner did not give the block", metadata: ["block": "\(key)", "member": "\(peer)", "error": "\(error.message)"])
            if connection.isBroken {
                connection.close()
                markDown(peer, error)
            } else {
                giveBack(connection, peer)  // it answered (not cached there): the connection is in step
                if error.code == .notFound { lock.withLock { sampler.answered(peer, hit: false) } }
            }
            return false
        }
        lock.withLock { sampler.answered(peer, hit: true) }
        giveBack(connection, peer)
        metrics.handoverHits.increment()
        return true
    }

    private func giveBack(_ c: WorkerConnection, _ peer: String) {
        let extra = lock.withLock { () -> WorkerConnection? in
            if idle[peer, default: []].count < 4 { idle[peer, default: []].append(c); return nil }
            return c
        }
        extra?.close()
    }

    private func markDown(_ peer: String, _ error: ShoalError) {
        lock.withLock { downUntil[peer] = monotonicNanos() + 10_000_000_000 }
        logger.info("previous owner unreachable; its blocks come from the store for now", metadata: ["member": "\(peer)", "error": "\(error.message)"])
    }

    func close() {
        let all = lock.withLock { () -> [WorkerConnection] in
            closed = true
            defer { idle.removeAll() }
            return Array(idle.values.joined())
        }
        all.forEach { $0.close() }
    }
}
