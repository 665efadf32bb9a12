#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A worker as placement sees it.
public struct PlacementMember: Sendable, Equatable {
    public var id: String
    public var weight: Double

    public init(id: String, weight: Double = 1) {
        self.id = id
        self.weight = weight
    }
}

/// Weighted rendezvous hashing (straw2's `ln(u)/weight`) over 2^20 slots: a block maps to a
/// slot, a slot to the member with the highest score. A departing member moves only its own
/// slots; weight 0 drains a member. Scores are computed per lookup (a few members: nanoseconds);
/// a precomputed slot table is the step for large clusters.
public struct Placement: Sendable {
    public static let slotBits = 20
    public let members: [PlacementMember]
    private let seeds: [UInt64]

    public init(members: [PlacementMember]) {
        self.members = members
        self.seeds = members.map { Placement.hash64(Array($0.id.utf8)) }
    }

    public static func slot(of id: BlockID) -> UInt64 {
        id.low & ((1 << UInt64(slotBits)) - 1)
    }

    /// Member indexes for `slot`, best first; members of weight 0 are left out.
    public func ranked(slot: UInt64, count: Int = 2) -> [Int] {
        var scored: [(Double, Int)] = []
        scored.reserveCapacity(members.count)
        for (m, member) in members.enumerated() where member.weight > 0 {
            let bits = Placement.mix(seeds[m] ^ (slot &* 0x9E37_79B9_7F4A_7C15))
            let u = (Double(bits >> 11) + 0.5) / Double(UInt64(1) << 53)
            scored.append((log(u) / member.weight, m))
        }
        scored.sort { $0.0 > $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        return scored.prefix(count).map(\.1)
    }

    /// The members for a block, best first (rank 1 the owner, rank 2 the fallback).
    public func owners(of id: BlockID, count: Int = 2) -> [Int] {
        ranked(slot: Placement.slot(of: id), count: count)
    }

    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func hash64(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return mix(h)
    }
}
