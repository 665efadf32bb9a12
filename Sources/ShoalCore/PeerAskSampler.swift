/// Which misses a worker asks of a peer that may hold their blocks (a block's previous owner,
/// after a view change): all of them while the peer answers some with the block, and only one in
/// `sampleEvery` once its last `missesBeforeSampling` answers were all misses, until one of those
/// is a hit again. An ask costs a round trip between workers and a hit saves a store GET; a peer
/// that holds none of what is read (a cold dataset, a cluster that just started) then costs a
/// round trip per `sampleEvery` misses instead of one per miss, and a peer that does hold the
/// blocks is back to being asked for every one at its first hit.
public struct PeerAskSampler: Sendable {
    public let missesBeforeSampling: Int
    public let sampleEvery: Int
    /// Per peer: misses in a row, and misses not asked since the last one asked.
    private var peers: [String: (streak: Int, skipped: Int)] = [:]

    public init(missesBeforeSampling: Int = 32, sampleEvery: Int = 32) {
        self.missesBeforeSampling = max(1, missesBeforeSampling)
        self.sampleEvery = max(1, sampleEvery)
    }

    /// Whether to ask `peer` for the next miss (false: go to the store at once).
    public mutating func shouldAsk(_ peer: String) -> Bool {
        guard var p = peers[peer], p.streak >= missesBeforeSampling else { return true }
        p.skipped += 1
        let ask = p.skipped >= sampleEvery
        if ask { p.skipped = 0 }
        peers[peer] = p
        return ask
    }

    /// `peer` answered an ask: with the block (`hit`), or without it. Failures to answer are not
    /// answers (the caller leaves the peer alone for a while instead).
    public mutating func answered(_ peer: String, hit: Bool) {
        if hit {
            peers[peer] = nil
        } else {
            peers[peer, default: (0, 0)].streak += 1
        }
    }

    /// Forgets every peer's answers: after a view change, other blocks move, to and from other peers.
    public mutating func reset() { peers.removeAll() }
}
