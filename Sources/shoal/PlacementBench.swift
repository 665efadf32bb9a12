import ArgumentParser
import ShoalCore
import ShoalSys

/// Placement figures: how evenly slots spread (weighted), how many move when one member joins
/// or leaves, what building a view's table and a lookup cost.
struct PlacementBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "placement", abstract: "Measure placement: balance, slots moved on a join or a leave, build and lookup time.")

    @Option(help: "Member counts, comma-separated.") var members = "10,100,1000"
    @Flag(help: "Print one JSON line per case.") var json = false

    struct Case {
        var members: Int
        var weights: String
        var balance: Double
        var movedOnJoin: Double
        var idealJoin: Double
        var movedOnLeave: Double
        var idealLeave: Double
        var buildSeconds: Double
        var lookupNanos: Double
    }

    func run() throws {
        let counts = members.split(separator: ",").compactMap { Int($0.trimmingSpaces()) }
        guard !counts.isEmpty, counts.allSatisfy({ $0 >= 2 && $0 < MembershipView.maxMembers }) else {
            throw fail("--members must be counts from 2 to \(MembershipView.maxMembers - 1), e.g. 10,100,1000", code: 2)
        }
        for n in counts {
            for weights in ["equal", "2:1"] {
                let c = try measure(n, weights: weights)
                if json {
                    print("{\"members\":\(c.members),\"weights\":\"\(c.weights)\",\"balanceMaxOverMean\":\(formatFixed(c.balance, decimals: 4)),"
                          + "\"movedOnJoin\":\(formatFixed(c.movedOnJoin, decimals: 5)),\"idealJoin\":\(formatFixed(c.idealJoin, decimals: 5)),"
                          + "\"movedOnLeave\":\(formatFixed(c.movedOnLeave, decimals: 5)),\"idealLeave\":\(formatFixed(c.idealLeave, decimals: 5)),"
                          + "\"buildSeconds\":\(formatFixed(c.buildSeconds, decimals: 3)),\"lookupNanos\":\(formatFixed(c.lookupNanos, decimals: 2))}")
                } else {
                    print("\(n) members, \(weights) weights: max/mean \(formatFixed(c.balance, decimals: 3)); join moves \(formatFixed(c.movedOnJoin, decimals: 4)) "
                          + "(ideal \(formatFixed(c.idealJoin, decimals: 4))), leave moves \(formatFixed(c.movedOnLeave, decimals: 4)) "
                          + "(ideal \(formatFixed(c.idealLeave, decimals: 4))); build \(formatFixed(c.buildSeconds, decimals: 2)) s, lookup \(formatFixed(c.lookupNanos, decimals: 1)) ns")
                }
            }
        }
    }

    /// Members w0…w(n-1); with 2:1 weights every other member weighs 2.
    func view(_ n: Int, weights: String, epoch: UInt64, skip: Int? = nil) throws -> MembershipView {
        let members = (0..<n).filter { $0 != skip }.map {
            Member(id: "w\($0)", address: "10.\($0 >> 16).\(($0 >> 8) & 255).\($0 & 255):7070", weight: weights == "2:1" && $0 % 2 == 1 ? 2 : 1)
        }
        do { return try MembershipView(epoch: epoch, members: members) } catch { throw fail(error.message) }
    }

    func measure(_ n: Int, weights: String) throws -> Case {
        let start = monotonicNanos()
        let base = Placement(view: try view(n, weights: weights, epoch: 1))
        let build = Double(monotonicNanos() - start) / 1e9
        // Balance: each member's slots against its weight's share.
        let members = base.view.members
        let total = members.reduce(0) { $0 + $1.weight }
        var balance = 0.0
        for (i, m) in members.enumerated() {
            balance = max(balance, Double(base.slotCounts[i]) / (Double(Placement.slotCount) * m.weight / total))
        }
        // One more member (the next id), and one fewer (w0).
        let joined = Placement(view: try view(n + 1, weights: weights, epoch: 2))
        let left = Placement(view: try view(n, weights: weights, epoch: 3, skip: 0))
        func moved(_ other: Placement) -> Double {
            var count = 0
            for s in 0..<Placement.slotCount {
                let a = base.owner(slot: s).map { members[$0].id }
                let b = other.owner(slot: s).map { other.view.members[$0].id }
                if a != b { count += 1 }
            }
            return Double(count) / Double(Placement.slotCount)
        }
        let joiner = joined.view.members[joined.view.index(of: "w\(n)")!]
        let idealJoin = joiner.weight / (total + joiner.weight)
        let idealLeave = members[base.view.index(of: "w0")!].weight / total
        // Lookups of pseudo-random block ids, timed over a million.
        var ids: [BlockID] = []
        for i in 0..<4096 { ids.append(BlockID(high: UInt64(i) &* 0x9E37_79B9_7F4A_7C15, low: UInt64(i) &* 0xBF58_476D_1CE4_E5B9)) }
        var sink = 0
        let lookups = 1 << 22
        let t0 = monotonicNanos()
        for i in 0..<lookups { sink &+= base.owners(of: ids[i & 4095]).owner ?? 0 }
        let lookup = Double(monotonicNanos() - t0) / Double(lookups)
        if sink == -1 { print("") }
        return Case(members: n, weights: weights, balance: balance, movedOnJoin: moved(joined), idealJoin: idealJoin,
                    movedOnLeave: moved(left), idealLeave: idealLeave, buildSeconds: build, lookupNanos: lookup)
    }
}
