import Testing
import ShoalCore

@Suite struct PeerAskSamplerTests {
    /// The next `n` answers of `shouldAsk(peer)`.
    private func asks(_ s: inout PeerAskSampler, _ peer: String, _ n: Int = 1) -> [Bool] {
        (0..<n).map { _ in s.shouldAsk(peer) }
    }

    /// Asks for every miss until `missesBeforeSampling` misses in a row, then one in
    /// `sampleEvery`; a hit (even a sampled one) brings back asking for every miss.
    @Test func asksASampleOfAPeerThatMissesAndEveryBlockAfterAHit() {
        var s = PeerAskSampler(missesBeforeSampling: 4, sampleEvery: 3)
        for _ in 0..<4 {
            #expect(asks(&s, "a") == [true])
            s.answered("a", hit: false)
        }
        // Sampling: two skipped, the third asked.
        #expect(asks(&s, "a", 6) == [false, false, true, false, false, true])
        // Another peer is asked for everything.
        #expect(asks(&s, "b") == [true])
        // A sampled ask that hits: every miss is asked again, and the count of misses starts over.
        s.answered("a", hit: true)
        for _ in 0..<4 {
            #expect(asks(&s, "a") == [true])
            s.answered("a", hit: false)
        }
        #expect(asks(&s, "a") == [false])
    }

    /// A hit before the streak is long enough keeps every miss asked.
    @Test func aHitNowAndThenKeepsEveryMissAsked() {
        var s = PeerAskSampler(missesBeforeSampling: 4, sampleEvery: 3)
        for i in 0..<40 {
            #expect(asks(&s, "a") == [true])
            s.answered("a", hit: i % 4 == 3)
        }
    }

    /// After a view change every peer is asked for every miss again.
    @Test func aResetForgetsTheMisses() {
        var s = PeerAskSampler(missesBeforeSampling: 2, sampleEvery: 10)
        s.answered("a", hit: false)
        s.answered("a", hit: false)
        #expect(asks(&s, "a") == [false])
        s.reset()
        #expect(asks(&s, "a") == [true])
    }
}
