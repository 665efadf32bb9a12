#if canImport(Glibc)
import Glibc
#endif
internal import CShoalShims

/// A pthread mutex with a condition variable, for the blocking (thread-based) paths: buffer
/// waits, single-flight fills. Swift concurrency is kept out of these so a forked process is safe.
public final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    @inlinable
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits (lock held) until signalled or `deadlineNanos` (monotonic) passes; false on timeout.
    @discardableResult
    public func wait(untilNanos deadlineNanos: UInt64? = nil) -> Bool {
        guard let deadline = deadlineNanos else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    public func broadcast() { pthread_cond_broadcast(cond) }
    public func signal() { pthread_cond_signal(cond) }
}

/// Counts forks of this process (raised in the child), so that an object running a thread, or
/// a client's connection, can tell with one load, no syscall, that it is in a child where that
/// thread does not exist (or whose socket is its parent's). It counts the forks that run
/// `pthread_atfork` handlers: fork(), and so Python's os.fork and multiprocessing; a child made
/// with _Fork() or a raw clone is not seen.
public enum ForkGeneration {
    /// Written only in a child right after fork, while it has a single thread.
    nonisolated(unsafe) static var value = 0
    static let registered: Void = { _ = pthread_atfork(nil, nil, { ForkGeneration.value &+= 1 }) }()
    public static var current: Int {
        _ = registered
        return value
    }
}

/// A plain OS thread (no Dispatch, no Swift tasks).
public enum OSThread {
    private final class Box {
        let name: String
        let body: () -> Void
        init(_ name: String, _ body: @escaping () -> Void) {
            self.name = String(name.utf8.prefix(15)) ?? "shoal"
            self.body = body
        }
    }

    /// Starts a detached thread running `body`.
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(SysError) {
        let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attr, 1 << 20)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            shoal_set_thread_name(box.name)
            box.body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SysError("pthread_create(\(name))", errno: rc)
        }
    }
}

/// Cores online (at least 1).
public func processorCount() -> Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
