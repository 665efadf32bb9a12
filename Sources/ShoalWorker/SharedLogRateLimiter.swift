import ShoalCore
import ShoalSys

/// A `LogRateLimiter` shared by the connection threads, on the monotonic clock.
final class SharedLogRateLimiter: @unchecked Sendable {
    private var limiter: LogRateLimiter
    private let lock = ConditionLock()

    init(limit: Int, intervalNanos: UInt64) { limiter = LogRateLimiter(limit: limit, intervalNanos: intervalNanos) }

    /// Whether to write the line now, and how many lines were suppressed before it.
    func admit() -> (log: Bool, suppressedBefore: Int) {
        let now = monotonicNanos()
        return lock.withLock { limiter.admit(now: now) }
    }
}
