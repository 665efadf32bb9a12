import Testing
@testable import ShoalCore

@Suite struct HotPrefixesTests {
    /// A prefix read often stays on top while many read once each churn through the summary's
    /// few places; its count is never under its true one.
    @Test func aHeavyPrefixSurvivesManyLightOnes() {
        var h = HotPrefixes(capacity: 8)
        let now = 1_000_000.0
        for i in 0..<1000 {
            h.record("s3://b/heavy/", reads: 1, bytes: 10, now: now)
            h.record("s3://b/light-\(i)/", reads: 1, bytes: 1, now: now)
            if i % 2 == 0 { h.record("s3://b/medium/", reads: 1, bytes: 5, now: now) }
        }
        let top = h.top(since: now - 3600, limit: 3)
        #expect(top.count == 3)
        #expect(top[0].name == "s3://b/heavy/" && top[0].reads >= 1000)
        #expect(top[1].name == "s3://b/medium/" && top[1].reads >= 500)
        #expect(h.top(since: now - 3600, limit: 100).count <= 8)
    }

    /// Hourly buckets: a window leaves out older hours, and hours past the horizon are dropped.
    @Test func windowsAndTheHorizon() {
        var h = HotPrefixes(capacity: 4, hours: 24)
        let day = 86_400.0
        h.record("s3://b/old/", reads: 100, bytes: 1, now: 10 * day)
        h.record("s3://b/new/", reads: 1, bytes: 1, now: 10 * day + 20 * 3600)
        #expect(h.top(since: 10 * day + 19 * 3600, limit: 5).map(\.name) == ["s3://b/new/"])
        #expect(h.top(since: 10 * day, limit: 5).map(\.name) == ["s3://b/old/", "s3://b/new/"])
        // A day and more later the old hour is gone, whatever the window.
        h.record("s3://b/new/", reads: 1, bytes: 1, now: 11 * day + 2 * 3600)
        #expect(h.top(since: 0, limit: 5).map(\.name) == ["s3://b/new/"])
        #expect(h.top(since: 0, limit: 5)[0].reads == 2)
    }

    @Test func theSummariesReadBackAndBadOnesAreRefused() throws {
        var h = HotPrefixes()
        let now = 5_000_000.0
        h.record("s3://b/a/", reads: 3, bytes: 30, now: now)
        h.record("s3://b/\"quoted\"/", reads: 1, bytes: 1, now: now - 3600)
        var back = HotPrefixes()
        try back.decode(Array(h.encoded.utf8), now: now)
        #expect(back.top(since: 0, limit: 10) == h.top(since: 0, limit: 10))
        // Read a week later: nothing is recent enough to keep.
        var late = HotPrefixes()
        try late.decode(Array(h.encoded.utf8), now: now + 8 * 86_400)
        #expect(late.top(since: 0, limit: 10).isEmpty)
        #expect(throws: ShoalError.self) { try back.decode(Array("{\"hot\":[{\"hour\":1}]}".utf8), now: now) }
        #expect(throws: ShoalError.self) { try back.decode(Array("[]".utf8), now: now) }
    }
}
