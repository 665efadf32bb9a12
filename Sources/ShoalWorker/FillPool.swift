import ShoalCore
import ShoalIO
import ShoalSys

/// Threads for the work that blocks, so that no io shard ever waits: fills from the object
/// store, STATs that go to the store, and writing filled blocks to the cache. Each job posts its
/// result back to the shard that asked (`Shard.post`). Jobs run in arrival order, foreground
/// ones first: a background job (a warm's fill) starts only when no foreground one waits, so a
/// warm gets what the readers leave. The queues are bounded by the shards' own limits (requests
/// in flight per connection, leases). Each thread
/// has a ring of its own with the whole buffer region registered (`BufferPool.consumerRing`),
/// which its jobs read and write leased buffers with.
final class FillPool: @unchecked Sendable {
    private let lock = ConditionLock()
    private var foreground = JobQueue()
    private var background = JobQueue()
    private var stopping = false
    private var running = 0
    let threads: Int

    private let makeRing: () throws(SysError) -> IORing

    init(threads: Int, makeRing: @escaping () throws(SysError) -> IORing) {
        self.threads = max(1, threads)
        self.makeRing = makeRing
    }

    func start() throws(SysError) {
        for i in 0..<threads {
            let ring = try makeRing()
            try OSThread.spawn(name: "shoal-fill-\(i)") { [self] in run(ring) }
            lock.withLock { running += 1 }
        }
    }

    func submit(background: Bool = false, _ job: @escaping @Sendable (IORing) -> Void) {
        lock.withLock {
            if background { self.background.append(job) } else { foreground.append(job) }
        }
        lock.signal()
    }

    /// Jobs waiting, in arrival order.
    private struct JobQueue {
        private var jobs: [@Sendable (IORing) -> Void] = []
        private var head = 0

        var isEmpty: Bool { head == jobs.count }

        mutating func append(_ job: @escaping @Sendable (IORing) -> Void) { jobs.append(job) }

        mutating func take() -> (@Sendable (IORing) -> Void)? {
            guard head < jobs.count else { return nil }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 1024 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            return job
        }
    }

    private func run(_ ring: IORing) {
        while true {
            lock.lock()
            while foreground.isEmpty && background.isEmpty && !stopping { _ = lock.wait() }
            // One queue at a time (never both in one expression: each take is a modifying access).
            var next = foreground.take()
            if next == nil { next = background.take() }
            guard let job = next else {
                running -= 1
                lock.unlock()
                lock.broadcast()
                return
            }
            lock.unlock()
            job(ring)
        }
    }

    /// Finishes the queued jobs, then stops the threads (waits up to `timeoutNanos`).
    func stop(timeoutNanos: UInt64 = 30_000_000_000) {
        lock.withLock { stopping = true }
        lock.broadcast()
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        while running > 0 && monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
        lock.unlock()
    }
}

/// Leases parked by their buffer number while a request is in flight: an io shard's operation,
/// a fill job and its completion name the buffer by number (`user_data` and messages carry no
/// objects), and the lease itself waits here until its holder takes it back out to give it to
/// the pool. Each number has one holder at a time, the lease's own uniqueness, so no lock.
final class LeasePark: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<Lease?>
    let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        for i in 0..<count { (slots + i).initialize(to: nil) }
    }

    deinit {
        (slots).deinitialize(count: count)
        slots.deallocate()
    }

    /// Parks a lease; returns its number.
    func park(_ lease: consuming Lease) -> Int {
        let i = lease.index
        slots[i] = consume lease
        return i
    }

    /// Takes parked lease `i` back out (once per park; nil if it is not parked).
    func unpark(_ i: Int) -> Lease? { slots[i].take() }
}
