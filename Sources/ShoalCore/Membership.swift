#if canImport(Glibc)
import Glibc
#endif

/// Where a worker stands in the cluster. Only an active member owns slots: a joining one does
/// not yet, a draining one no longer does.
public enum MemberState: String, Sendable, CaseIterable {
    case joining, active, draining
}

/// One worker as the cluster knows it: a stable id (never a position in a list), the address of
/// its data plane, its weight (its share of the slots; by default its cache capacity) and state.
public struct Member: Sendable, Equatable {
    public var id: String
    public var address: String
    public var weight: Double
    public var state: MemberState
    /// Whether it serves READ data over RDMA as well as TCP (nil: its view does not say; a
    /// client then asks, RDMA_CONNECT).
    public var rdma: Bool?

    public init(id: String, address: String, weight: Double = 1, state: MemberState = .active, rdma: Bool? = nil) {
        self.id = id
        self.address = address
        self.weight = weight
        self.state = state
        self.rdma = rdma
    }

    /// Owns slots in a view: active, with a weight above 0 (weight 0 drains it).
    public var ownsSlots: Bool { state == .active && weight > 0 }
}

/// The cluster as one client or worker sees it at one time: its members, ordered by id, and an
/// epoch that orders views (a later view has a larger epoch).
public struct MembershipView: Sendable, Equatable {
    public let epoch: UInt64
    public let members: [Member]

    /// The most members a view may hold (a slot table entry names a member in 16 bits).
    public static let maxMembers = 0xFFFE

    /// Checks the members: ids unique and not empty, weights finite and not negative.
    public init(epoch: UInt64, members: [Member]) throws(ShoalError) {
        guard members.count <= MembershipView.maxMembers else {
            throw ShoalError(.badRequest, "a view of \(members.count) members; the limit is \(MembershipView.maxMembers)")
        }
        var seen = Set<String>()
        for m in members {
            guard !m.id.isEmpty else { throw ShoalError(.badRequest, "a member at \(m.address) has no id") }
            guard seen.insert(m.id).inserted else { throw ShoalError(.badRequest, "member id '\(m.id)' appears twice") }
            guard m.weight.isFinite, m.weight >= 0 else {
                throw ShoalError(.badRequest, "member '\(m.id)' has weight \(m.weight); a weight is a number of 0 or more")
            }
        }
        self.epoch = epoch
        self.members = members.sorted { $0.id < $1.id }
    }

    /// Whether `other` places every block as this view does: the same members, weights and
    /// states (an address, an RDMA flag or the epoch may differ).
    public func placesLike(_ other: MembershipView) -> Bool {
        members.count == other.members.count
            && zip(members, other.members).allSatisfy { $0.id == $1.id && $0.weight == $1.weight && $0.state == $1.state }
    }

    /// The position of member `id` in `members`.
    public func index(of id: String) -> Int? {
        var low = 0
        var high = members.count
        while low < high {
            let mid = (low + high) / 2
            if members[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low < members.count && members[low].id == id ? low : nil
    }
}

/// Block → slot (2^20 slots) → owner and fallback (rank 1 and rank 2) by weighted rendezvous
/// hashing (straw2: the member with the largest `ln(u) / weight` wins, `u` a hash of member and
/// slot), computed for every slot when the view is made, so a lookup is an index: no hashing of
/// members, no allocation. A member that leaves (or is drained to weight 0) moves only its own
/// slots, each to that slot's rank-2 member; one that joins takes about its weight's share, from
/// everyone in proportion.
public final class Placement: @unchecked Sendable {
    public static let slotBits = 20
    public static let slotCount = 1 << slotBits
    static let none: UInt32 = 0xFFFF

    public let view: MembershipView
    /// Per slot: owner's index in `view.members` in the low 16 bits, fallback's in the high
    /// (`none`: no such member).
    private let entries: UnsafeMutablePointer<UInt32>
    /// Slots owned per member.
    public let slotCounts: [Int]

    public init(view: MembershipView) {
        self.view = view
        let table = UnsafeMutablePointer<UInt32>.allocate(capacity: Placement.slotCount)
        let owning = view.members.indices.filter { view.members[$0].ownsSlots }
        // Members of one weight rank by their hash alone (ln is monotonic): per weight, the two
        // largest hashes are found with integer compares, and only those few candidates get a
        // logarithm (with one weight, none does). A view whose weights all differ takes a
        // logarithm per member and slot.
        let weights = Array(Set(owning.map { view.members[$0].weight })).sorted()
        let classOf = owning.map { weights.firstIndex(of: view.members[$0].weight)! }
        let seeds = owning.map { Placement.hash64(Array(view.members[$0].id.utf8)) }
        let inverse = weights.map { 1 / $0 }
        var counts = [Int](repeating: 0, count: view.members.count)
        let classes = weights.count
        let top = UnsafeMutableBufferPointer<(UInt64, Int)>.allocate(capacity: max(1, 2 * classes))
        defer { top.deallocate() }
        seeds.withUnsafeBufferPointer { seeds in
            classOf.withUnsafeBufferPointer { classOf in
                for slot in 0..<Placement.slotCount {
                    let salt = UInt64(slot) &* 0x9E37_79B9_7F4A_7C15
                    for c in 0..<2 * classes { top[c] = (0, -1) }
                    for k in 0..<seeds.count {
                        let bits = Placement.mix(seeds[k] ^ salt)
                        let c = 2 * classOf[k]
                        if top[c].1 < 0 || bits > top[c].0 {
                            top[c + 1] = top[c]
                            top[c] = (bits, k)
                        } else if top[c + 1].1 < 0 || bits > top[c + 1].0 {
                            top[c + 1] = (bits, k)
                        }
                    }
                    var best = -1
                    var second = -1
                    var bestScore = -Double.infinity
                    var secondScore = -Double.infinity
                    for c in 0..<2 * classes where top[c].1 >= 0 {
                        let (bits, k) = top[c]
                        let score = classes == 1 ? Double(bits) : Placement.logUnit(bits) * inverse[c / 2]
                        if best < 0 || score > bestScore || (score == bestScore && k < best) {
                            (second, secondScore) = (best, bestScore)
                            (best, bestScore) = (k, score)
                        } else if second < 0 || score > secondScore || (score == secondScore && k < second) {
                            (second, secondScore) = (k, score)
                        }
                    }
                    let owner = best < 0 ? Placement.none : UInt32(owning[best])
                    let fallback = second < 0 ? Placement.none : UInt32(owning[second])
                    table[slot] = owner | fallback << 16
                    if best >= 0 { counts[owning[best]] += 1 }
                }
            }
        }
        entries = table
        slotCounts = counts
    }

    deinit { entries.deallocate() }

    /// The slot of a block.
    @inline(__always)
    public static func slot(of id: BlockID) -> Int { Int(truncatingIfNeeded: id.low) & (slotCount - 1) }

    /// The owner of `slot` (an index in `view.members`); nil when no member owns slots.
    @inline(__always)
    public func owner(slot: Int) -> Int? {
        let e = entries[slot] & 0xFFFF
        return e == Placement.none ? nil : Int(e)
    }

    /// The rank-2 member of `slot`, which takes it if its owner leaves or fails.
    @inline(__always)
    public func fallback(slot: Int) -> Int? {
        let e = entries[slot] >> 16
        return e == Placement.none ? nil : Int(e)
    }

    /// Owner and fallback of a block.
    public func owners(of id: BlockID) -> (owner: Int?, fallback: Int?) {
        let s = Placement.slot(of: id)
        return (owner(slot: s), fallback(slot: s))
    }

    /// The share of the slots member `index` owns.
    public func share(of index: Int) -> Double { Double(slotCounts[index]) / Double(Placement.slotCount) }

    /// ln(u) for u = (top 53 bits of `bits` + 0.5) / 2^53, in (0, 1).
    @inline(__always)
    static func logUnit(_ bits: UInt64) -> Double {
        log((Double(bits >> 11) + 0.5) / 9_007_199_254_740_992)  // 2^53
    }

    /// SplitMix64's output for `x`: one step from state `x`.
    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var g = SplitMix(seed: x)
        return g.next()
    }

    static func hash64(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return mix(h)
    }
}
