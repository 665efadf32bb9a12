/// Lets at most `limit` log lines through per `intervalNanos`, and counts the rest so the next
/// line that goes through can say how many were suppressed. Time is passed in (no clock here).
public struct LogRateLimiter: Sendable {
    public let limit: Int
    public let intervalNanos: UInt64
    private var windowStart: UInt64?
    private var passed = 0
    private var suppressed = 0

    public init(limit: Int, intervalNanos: UInt64) {
        self.limit = max(1, limit)
        self.intervalNanos = max(1, intervalNanos)
    }

    /// The lines suppressed since the last one let through (not yet reported).
    public var pendingSuppressed: Int { suppressed }

    /// Whether a line at `now` may be written; if so, how many were suppressed before it.
    public mutating func admit(now: UInt64) -> (log: Bool, suppressedBefore: Int) {
        if let start = windowStart, now >= start, now - start < intervalNanos {
            guard passed < limit else {
                suppressed += 1
                return (false, 0)
            }
        } else {
            windowStart = now
            passed = 0
        }
        passed += 1
        defer { suppressed = 0 }
        return (true, suppressed)
    }
}
