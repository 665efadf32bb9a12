import Testing
import ShoalCore

@Suite struct LogRateLimiterTests {
    @Test func letsAFewLinesThroughPerIntervalAndCountsTheRest() {
        var limiter = LogRateLimiter(limit: 3, intervalNanos: 1_000)
        let first = (0..<10).map { limiter.admit(now: 100 + UInt64($0)).log }
        #expect(first == [true, true, true, false, false, false, false, false, false, false])
        #expect(limiter.pendingSuppressed == 7)
        // The next interval: the first line through reports the 7 suppressed, then the count starts again.
        let next = limiter.admit(now: 1_100)
        #expect(next.log && next.suppressedBefore == 7)
        #expect(limiter.pendingSuppressed == 0)
        #expect(limiter.admit(now: 1_101) == (true, 0))
        #expect(limiter.admit(now: 1_102).log)
        #expect(!limiter.admit(now: 1_103).log)
        #expect(limiter.admit(now: 5_000) == (true, 1))
    }

    @Test func aClockThatGoesBackStartsANewInterval() {
        var limiter = LogRateLimiter(limit: 1, intervalNanos: 1_000)
        #expect(limiter.admit(now: 10_000).log)
        #expect(!limiter.admit(now: 10_001).log)
        #expect(limiter.admit(now: 5).log)
    }
}
