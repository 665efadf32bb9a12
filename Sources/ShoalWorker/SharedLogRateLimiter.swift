import Logging
import ShoalCore
import ShoalSys

/// A `LogRateLimiter` shared by the connection threads, on the monotonic clock.
final class SharedLogRateLimiter: @unchecked Sendable {
    private var limiter: LogRateLimiter
    private let lock = ConditionLock()

    init(limit: Int, intervalNanos: UInt64) { limiter = LogRateLimiter(limit: limit, intervalNanos: intervalNanos) }

    /// Writes the line if the limit lets it through, saying how many were left out before it.
    func log(_ logger: Logger, _ level: Logger.Level, _ message: Logger.Message, _ metadata: Logger.Metadata = [:]) {
        let now = monotonicNanos()
        let (write, suppressed) = lock.withLock { limiter.admit(now: now) }
        guard write else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed) more since the last such line" }
        logger.log(level: level, message, metadata: metadata)
    }
}
