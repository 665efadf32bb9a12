import Logging
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTransport

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

    init(source: any MembershipSource, myID: String, secret: [UInt8], windowSeconds: Double, logger: Logger) {
        self.source = source
        self.myID = myID
        self.secret = secret
        windowNanos = UInt64(max(0, windowSeconds) * 1e9)
        self.logger = logger
    }

    /// Takes the source's view if it changed (the one it replaces becomes the previous). Called
    /// on every change etcd reports and on every READ checked against the view, so that the
    /// previous view is the one just before, not the last one a miss happened to see.
    func observe() {
        let (view, placement) = source.current(force: false)
        observe(view, placement)
    }

    func observe(_ view: MembershipView, _ placement: Placement) {
        lock.withLock {
            guard current !== placement else { return }
            if let current {
                previous = current
            } else if view.index(of: myID) != nil, let without = try? MembershipView(epoch: 0, members: view.members.filter { $0.id != myID }) {
                // The first view has this worker in it: it joined, or came back, just now.
                previous = Placement(view: without)
            }
            current = placement
            changedAt = monotonicNanos()
        }
    }

    /// The member that owned block `id` in the previous view, when it is not this worker, the
    /// view changed less than the window ago, and it is not marked down.
    func previousOwner(of id: BlockID) -> (id: String, endpoint: Endpoint)? {
        guard windowNanos > 0 else { return nil }
        observe()
        let now = monotonicNanos()
        return lock.withLock { () -> (String, Endpoint)? in
            guard let previous, now - changedAt < windowNanos, let owner = previous.owners(of: id).owner else { return nil }
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
    /// source now (the READ may be the first news of a view that put the block here).
    func fetch(_ key: BlockKey, id: BlockID, epoch: UInt64, length: Int, into data: UnsafeMutableRawPointer, metrics: WorkerMetrics) -> Bool {
        guard windowNanos > 0 else { return false }
        if epoch > lock.withLock({ current?.view.epoch ?? 0 }) {
            let (view, placement) = source.current(force: true)
            observe(view, placement)
        }
        guard let (peer, endpoint) = previousOwner(of: id) else { return false }
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
        }
        let request = ReadRequest(block: key, offset: 0, length: UInt32(length), flags: ReadRequest.cachedOnlyFlag)
        do {
            let rid = try connection.sendRead(request, into: data, length: length)
            try connection.receiveRead(id: rid)
        } catch {
            if connection.isBroken {
                connection.close()
                markDown(peer, error)
            } else {
                giveBack(connection, peer)  // it answered (not cached there): the connection is in step
            }
            return false
        }
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
            defer { idle.removeAll() }
            return Array(idle.values.joined())
        }
        all.forEach { $0.close() }
    }
}
