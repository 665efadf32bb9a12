import Testing
import ShoalCore

@Suite struct RDMACreditsTests {
    /// Chains are posted only while the whole chain fits; one completion retires its chain and
    /// every older one; the queue never holds more than its depth.
    @Test func chainsFitTheQueueAndACompletionRetiresEveryOlderChain() {
        var q = SendQueueCredits(depth: 8)
        let a = q.reserve(3), b = q.reserve(3)
        #expect(a != nil && b != nil && a != b)
        #expect(q.reserve(3) == nil, "9 of 8")
        let c = q.reserve(2)
        #expect(c != nil && q.outstanding == 8 && q.highWater == 8)
        #expect(q.reserve(1) == nil)
        #expect(q.completed(b!) == 6, "b's completion retires a too")
        #expect(q.outstanding == 2)
        #expect(q.completed(a!) == 0, "retired already")
        #expect(q.completed(c!) == 2 && q.outstanding == 0)
        #expect(q.reserve(9) == nil && q.reserve(0) == nil && q.maxChain == 8)
        // Many rounds: never above the depth.
        var ids: [UInt64] = []
        for round in 0..<1000 {
            if let id = q.reserve(1 + round % 5) { ids.append(id) } else if !ids.isEmpty { q.completed(ids.removeFirst()) }
            #expect(q.outstanding <= 8)
        }
        #expect(q.highWater == 8)
    }

    /// A post that fails part-way keeps what the device took (it comes back flushed) and stops
    /// all posting; an error completion does too.
    @Test func aPartlyFailedPostPutsTheQueueInTheErrorState() {
        var q = SendQueueCredits(depth: 16)
        let a = q.reserve(4)!
        let b = q.reserve(6)!
        q.postFailed(b, posted: 2, reason: "ENOMEM at work request 3")
        #expect(q.state == .failed("ENOMEM at work request 3"))
        #expect(q.outstanding == 6, "4 of a and the 2 of b the device took")
        #expect(q.reserve(1) == nil)
        for _ in 0..<6 { q.flushed() }
        #expect(q.outstanding == 0)
        q.flushed()
        #expect(q.outstanding == 0)
        #expect(q.completed(a) == 0)
        var r = SendQueueCredits(depth: 4)
        _ = r.reserve(2)
        r.fail("remote access error")
        r.fail("second reason is not kept")
        #expect(r.state == .failed("remote access error") && r.reserve(1) == nil)
        r.reset()
        #expect(r.outstanding == 0 && r.reserve(1) == nil, "a failed queue pair is replaced, not reused")
    }

    /// An error completion of work request 2 of a chain of 4: the two before it ran silently and
    /// are retired with it, the one after it comes back flushed: the count ends at zero.
    @Test func anErrorMidChainRetiresWhatRanAndTheFlushesTheRest() {
        var q = SendQueueCredits(depth: 8)
        let a = q.reserve(2)!
        let b = q.reserve(4)!
        #expect(q.completed(a) == 2)
        q.failed(b, index: 2, reason: "remote access error")
        #expect(q.outstanding == 1 && q.state == .failed("remote access error"))
        q.flushed()
        #expect(q.outstanding == 0 && q.isRetired(b) && q.isRetired(a) && !q.isRetired(b + 1))
    }

    @Test func messageCreditsAreSpentAndGrantedBackNeverAboveTheGrant() {
        var m = MessageCredits(granted: 2)
        #expect(m.spend() && m.spend() && !m.spend())
        m.grant(1)
        #expect(m.available == 1)
        m.grant(5)
        #expect(m.available == 2 && m.granted == 2)
        #expect(MessageCredits(granted: -3).available == 0)
    }
}
