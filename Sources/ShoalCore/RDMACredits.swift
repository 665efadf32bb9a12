/// The send queue of one RDMA queue pair, counted (docs/DESIGN.md, "RDMA"): work requests are
/// posted in chains of which only the last is signalled, so one completion retires its whole
/// chain and every chain before it (a reliable connection completes in order). A chain is posted
/// only when the queue has room for all of it, so the queue pair never holds more than `depth`
/// work requests and the device never refuses a post for want of room.
///
/// A post that fails part-way (the device took the first work requests of a chain, not the rest),
/// or an error completion, puts the queue pair in the error state: nothing more is posted on it,
/// and what it held comes back as flushed completions (counted by `flushed`) or is written off by
/// `reset` once the queue pair is torn down. The caller then falls back (TCP) for that peer.
public struct SendQueueCredits: Sendable {
    public enum State: Sendable, Equatable {
        case ready
        /// No more posts: the reason, for the log and the fallback's counter.
        case failed(String)
    }

    public let depth: Int
    public private(set) var state: State = .ready
    /// Work requests posted and not yet retired.
    public private(set) var outstanding = 0
    /// The most work requests ever outstanding at once (never above `depth`).
    public private(set) var highWater = 0
    /// Chains posted and not yet retired, oldest first: (chain number, work requests).
    private var chains: [(id: UInt64, count: Int)] = []
    private var head = 0
    private var nextID: UInt64 = 1

    public init(depth: Int) {
        self.depth = max(1, depth)
    }

    /// Room for a chain of `count` work requests: its number (the signalled one's `wr_id`), or
    /// nil when the queue is full or failed. A chain longer than the queue can never be posted:
    /// split it first (`maxChain`).
    public mutating func reserve(_ count: Int) -> UInt64? {
        guard state == .ready, count > 0, outstanding + count <= depth else { return nil }
        let id = nextID
        nextID += 1
        chains.append((id, count))
        outstanding += count
        highWater = max(highWater, outstanding)
        return id
    }

    /// The longest chain that may be posted at once.
    public var maxChain: Int { depth }

    /// The signalled work request of chain `id` completed successfully: that chain and every
    /// older one are retired. Returns the work requests retired (0 for an unknown or retired id).
    @discardableResult
    public mutating func completed(_ id: UInt64) -> Int {
        guard chains[head...].contains(where: { $0.id == id }) else { return 0 }
        var retired = 0
        while head < chains.count, chains[head].id <= id {
            retired += chains[head].count
            head += 1
        }
        compact()
        outstanding -= retired
        return retired
    }

    /// Work request `index` of chain `id` completed with an error: the ones before it in that
    /// chain ran (unsignalled, so silently) and are retired with it, and the queue pair stops.
    /// The work requests after it come back flushed (`flushed`), one completion each.
    public mutating func failed(_ id: UInt64, index: Int, reason: String) {
        if let i = chains[head...].firstIndex(where: { $0.id == id }) {
            // Older chains completed before it (in order): their signalled ends retired them.
            let done = min(chains[i].count, index + 1)
            chains[i].count -= done
            outstanding -= done
            if chains[i].count == 0 && i == head { head += 1 }
            compact()
        }
        fail(reason)
    }

    /// The device took only the first `posted` work requests of chain `id`: the queue pair goes
    /// to the error state. Which of those ran (silently) and which come back flushed cannot be
    /// told apart, so from here the count is only an upper bound until `reset` (the queue pair
    /// is torn down); the ones never posted are taken off now.
    public mutating func postFailed(_ id: UInt64, posted: Int, reason: String) {
        if let i = chains[head...].firstIndex(where: { $0.id == id }) {
            let unposted = chains[i].count - max(0, min(posted, chains[i].count))
            chains[i].count -= unposted
            outstanding -= unposted
        }
        fail(reason)
    }

    /// Whether chain `id` was posted and has been retired (its completion came, or a later one's).
    public func isRetired(_ id: UInt64) -> Bool {
        id < nextID && !chains[head...].contains { $0.id == id }
    }

    /// An error completion (or a broken connection): no more posts on this queue pair.
    public mutating func fail(_ reason: String) {
        if case .ready = state { state = .failed(reason) }
    }

    /// A completion of a failed queue pair's work request came back flushed: one retired.
    public mutating func flushed() {
        guard outstanding > 0 else { return }
        outstanding -= 1
        // Retire from the oldest chain: flushes come in posting order.
        if head < chains.count {
            chains[head].count -= 1
            if chains[head].count == 0 { head += 1 }
        }
        compact()
    }

    /// The queue pair was torn down: nothing is outstanding any more, and it takes posts again
    /// only once replaced (a new `SendQueueCredits`).
    public mutating func reset() {
        chains.removeAll()
        head = 0
        outstanding = 0
    }

    private mutating func compact() {
        if head == chains.count {
            chains.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64 && head * 2 > chains.count {
            chains.removeFirst(head)
            head = 0
        }
    }
}

/// Message credits of one direction of an RDMA connection: a peer may SEND only into a receive
/// buffer the other side has posted, so the sender holds one credit per buffer it was granted
/// and spends one per message; the receiver grants them back as it reposts its buffers.
public struct MessageCredits: Sendable, Equatable {
    public private(set) var available: Int
    /// The most messages ever in flight at once.
    public private(set) var granted: Int

    public init(granted: Int) {
        available = max(0, granted)
        self.granted = available
    }

    /// Spends one credit for a message: false when none is left (the message must wait).
    public mutating func spend() -> Bool {
        guard available > 0 else { return false }
        available -= 1
        return true
    }

    /// The receiver reposted `count` buffers: as many credits come back (never above the grant).
    public mutating func grant(_ count: Int) {
        available = min(granted, available + max(0, count))
    }
}
