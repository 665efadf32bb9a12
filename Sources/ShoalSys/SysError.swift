#if canImport(Glibc)
import Glibc
#endif
internal import CShoalShims

/// A failed system call: which operation, on what, and errno.
public struct SysError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Reads errno at once, before anything else can clobber it.
@inline(never)
public func currentErrno() -> Int32 { errno }

/// Runs a syscall, retrying EINTR; a negative result becomes a `SysError`.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ operation: @autoclosure () -> String, _ body: () -> T) throws(SysError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = currentErrno()
        if e == EINTR { continue }
        throw SysError(operation(), errno: e)
    }
}

/// Monotonic time in nanoseconds.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The nanoseconds from `start` to `now`, 0 when `start` is later (another thread may have
/// stamped it after `now` was read): never a trap on unsigned underflow.
@inline(__always)
public func elapsedNanos(from start: UInt64, to now: UInt64) -> UInt64 { now > start ? now - start : 0 }

/// Sleeps the calling thread `nanos` nanoseconds (through signals).
public func sleepNanos(_ nanos: UInt64) {
    guard nanos > 0 else { return }
    var ts = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
    var left = timespec()
    while nanosleep(&ts, &left) == -1 && errno == EINTR { ts = left }
}

/// Wall-clock time, seconds since 1970 (for what must outlast a restart: a pin's expiry).
public func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Bytes from the kernel's random source (`getrandom`), for nonces and secrets. Throws when the
/// source fails, never returns fewer or zeroed bytes: a predictable nonce or secret is worse than
/// no connection.
public func secureRandomBytes(_ count: Int) throws(SysError) -> [UInt8] {
    try FaultInjection.checkRandomSource()
    var out = [UInt8](repeating: 0, count: count)
    var filled = 0
    while filled < count {
        let n = out.withUnsafeMutableBytes { shoal_getrandom($0.baseAddress! + filled, count - filled) }
        if n > 0 { filled += n; continue }
        let e = n < 0 ? currentErrno() : EIO
        if e == EINTR { continue }
        throw SysError("the system random source (getrandom) failed; no nonce or secret can be made", errno: e)
    }
    return out
}
