import ShoalCore
import ShoalIO
import ShoalSys

/// Threads for the work that blocks, so that no io shard ever waits: fills from the object
/// store, STATs that go to the store, and writing filled blocks to the cache. Each job posts its
/// result back to the shard that asked (`Shard.post`). Jobs run in arrival order, foreground
/// ones first: the warm-up queue (a warm's fills) runs when no foreground job waits, so a warm
/// gets what the readers leave; under load that never lets up it still gets one job in
/// `backgroundShare`, so its client (which gives up on a worker after its timeout) sees it move.
/// Once the warm-up queue is closed (the worker is stopping: `WarmUpService`), its waiting jobs
/// are cancelled, and so is any job submitted to it later. The queues are bounded by the shards'
/// own limits (requests in flight per connection, leases). Each thread
/// has a ring of its own with the whole buffer region registered (`BufferPool.consumerRing`),
/// which its jobs read and write leased buffers with.
final class FillPool: @unchecked Sendable {
    private let lock = ConditionLock()
    private var foreground = FIFOQueue<@Sendable (IORing) -> Void>()
    private var background = FIFOQueue<BackgroundJob>()
    /// Foreground jobs taken in a row while background ones waited.
    private var foregroundStreak = 0
    private var backgroundClosed = false
    private var stopping = false
    /// Under steady foreground load, one job in this many is a background one.
    static let backgroundShare = 8
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

    func submit(_ job: @escaping @Sendable (IORing) -> Void) {
        lock.withLock { foreground.append(job) }
        lock.signal()
    }

    /// A job of the warm-up queue; `cancel` runs instead of it (on the caller's thread) if the
    /// queue is closed before it starts.
    struct BackgroundJob {
        var run: @Sendable (IORing) -> Void
        var cancel: @Sendable () -> Void
    }

    func submitBackground(_ job: BackgroundJob) {
        let accepted = lock.withLock { () -> Bool in
            guard !backgroundClosed else { return false }
            background.append(job)
            return true
        }
        if accepted { lock.signal() } else { job.cancel() }
    }

    /// Closes the warm-up queue: the jobs waiting in it are cancelled, and later ones too.
    func closeBackground() {
        var dropped: [BackgroundJob] = []
        lock.withLock {
            backgroundClosed = true
            while let job = background.take() { dropped.append(job) }
        }
        for job in dropped { job.cancel() }
    }

    /// Jobs waiting in the warm-up queue.
    var backgroundWaiting: Int { lock.withLock { background.count } }

    /// A warm's fill may go on now, outside the queue (a warm lane's next READ, on the fill thread
    /// that ended the one before): no reader's job waits, and the warm-up queue is open.
    var mayRunWarm: Bool { lock.withLock { !backgroundClosed && foreground.isEmpty } }

    private func run(_ ring: IORing) {
        while true {
            lock.lock()
            while foreground.isEmpty && background.isEmpty && !stopping { _ = lock.wait() }
            // One queue at a time (never both in one expression: each take is a modifying access).
            var next: (@Sendable (IORing) -> Void)?
            if background.isEmpty || foregroundStreak < FillPool.backgroundShare - 1 {
                next = foreground.take()
            }
            if next == nil {
                next = background.take()?.run
                foregroundStreak = 0
            } else if !background.isEmpty {
                foregroundStreak += 1
            }
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
