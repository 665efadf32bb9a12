/// Faults injected into disk I/O by path, for tests of disk failure handling: every read or write
/// through `IOSlot` or `FileHandle` on that path fails with `errno`, or is delayed first.
public enum FaultInjection {
    public enum Fault: Sendable {
        case error(Int32)
        case delay(nanos: UInt64)
    }

    nonisolated(unsafe) private static var active = false
    nonisolated(unsafe) private static var faults: [String: Fault] = [:]
    private static let lock = ConditionLock()

    public static func set(path: String, _ fault: Fault?) {
        lock.withLock {
            faults[path] = fault
            active = !faults.isEmpty
        }
    }

    nonisolated(unsafe) private static var randomSourceFault: (thread: pthread_t, errno: Int32)?

    /// Makes `secureRandomBytes` fail with `errno` on the calling thread only (nil: work again),
    /// for tests of a broken random source that must not break the tests running beside them.
    public static func setRandomSource(failingWith errno: Int32?) {
        lock.withLock { randomSourceFault = errno.map { (pthread_self(), $0) } }
    }

    static func checkRandomSource() throws(SysError) {
        guard let fault = lock.withLock({ randomSourceFault }), pthread_equal(fault.thread, pthread_self()) != 0 else { return }
        throw SysError("the system random source (getrandom) failed (injected fault)", errno: fault.errno)
    }

    /// Whether a fault is set for `path`: an io shard then hands the read to a blocking thread,
    /// where the fault applies as it does to every other read.
    public static func affects(_ path: String) -> Bool {
        guard active else { return false }
        return lock.withLock { faults[path] != nil }
    }

    /// Applies the fault for `path`, if any; throws the injected error.
    @inline(__always)
    public static func check(_ path: String, _ what: String) throws(SysError) {
        guard active else { return }
        guard let fault = lock.withLock({ faults[path] }) else { return }
        switch fault {
        case .error(let e): throw SysError("\(what) \(path) (injected fault)", errno: e)
        case .delay(let nanos):
            var ts = timespecFor(nanos)
            _ = nanosleepShim(&ts)
        }
    }
}

#if canImport(Glibc)
import Glibc
private func timespecFor(_ nanos: UInt64) -> timespec { timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000)) }
private func nanosleepShim(_ ts: inout timespec) -> Int32 { nanosleep(&ts, nil) }
#endif
