#if canImport(Glibc)
import Glibc
#endif
import ShoalSys

/// The right to use one buffer of a `BufferPool` until it is given back. It cannot be copied,
/// and giving it back consumes it, so no code keeps using a buffer after returning it.
public struct Lease: ~Copyable {
    /// The buffer's number: its fixed-buffer index in every ring the pool is registered with.
    public let index: Int
    public let base: UnsafeMutableRawPointer
    public let capacity: Int

    fileprivate init(index: Int, base: UnsafeMutableRawPointer, capacity: Int) {
        self.index = index
        self.base = base
        self.capacity = capacity
    }
}

/// One buffer of the pool with a private ring for blocking I/O on it (a fill thread, the cache's
/// cleaner, tools): a disk read lands in it with READ_FIXED and the socket sends from it.
public final class IOSlot: @unchecked Sendable {
    public let index: Int
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public let ring: IORing
    /// The buffer's index among the fixed buffers of `ring`.
    let fixedIndex: Int32

    init(index: Int, base: UnsafeMutableRawPointer, capacity: Int, ring: IORing, fixedIndex: Int32) {
        self.index = index
        self.base = base
        self.capacity = capacity
        self.ring = ring
        self.fixedIndex = fixedIndex
    }

    /// O_DIRECT read into the buffer at `bufferOffset` (both offsets and `count` 4 KiB-aligned).
    public func read(file: FileHandle, at offset: UInt64, count: Int, bufferOffset: Int = 0) throws(SysError) -> Int {
        precondition(bufferOffset + count <= capacity)
        try FaultInjection.check(file.path, "read")
        return try ring.perform(.readFixed(fd: file.fd, buffer: base + bufferOffset, count: count, offset: offset, bufferIndex: fixedIndex))
    }

    /// Two O_DIRECT reads into the buffer submitted together, each `(file offset, count, buffer
    /// offset)`: one wait for both. True when both read in full.
    public func readTwo(file: FileHandle, _ a: (UInt64, Int, Int), _ b: (UInt64, Int, Int)) throws(SysError) -> Bool {
        precondition(a.2 + a.1 <= capacity && b.2 + b.1 <= capacity)
        try FaultInjection.check(file.path, "read")
        let (n, m) = try ring.readPair(fd: file.fd, base: base, bufferIndex: fixedIndex, a, b)
        return n == a.1 && m == b.1
    }

    /// O_DIRECT write from the buffer.
    public func write(file: FileHandle, at offset: UInt64, count: Int, bufferOffset: Int = 0) throws(SysError) {
        precondition(bufferOffset + count <= capacity)
        try FaultInjection.check(file.path, "write")
        _ = try ring.perform(.writeFixed(fd: file.fd, buffer: base + bufferOffset, count: count, offset: offset, bufferIndex: fixedIndex))
    }
}

/// The worker's buffers: one region allocated at start (2 MiB-aligned, huge pages where the host
/// has them), cut into `count` I/O buffers handed out as leases, and `tierSlots` more for the
/// DRAM tier. Registration is a separate step per consumer: each io shard's ring registers the
/// whole region once (`register(with:)`, fixed-buffer index = buffer number), and later each
/// RDMA protection domain will register the same region. Blocking consumers (fill threads)
/// register it with a ring of their own (`consumerRing`); tools and tests that borrow a buffer
/// now and then get it with a small ring of its own (`acquire`).
public final class BufferPool: @unchecked Sendable {
    public let bufferSize: Int
    /// I/O buffers handed out as leases.
    public let count: Int
    /// Buffers after the I/O ones, kept for the DRAM tier (never leased).
    public let tierSlots: Int
    private let region: UnsafeMutableRawPointer
    private let regionSize: Int
    private var free: [Int]
    private let lock = ConditionLock()
    /// Small rings with one buffer registered each, made on first use by `acquire` (tools and
    /// tests that borrow a buffer now and then; the serving path registers the region instead).
    private var privateRings: [IORing?]

    public static let alignment = 2 * 1024 * 1024

    /// `bufferSize` is rounded up to 4 KiB.
    /// The NUMA node the region's pages were bound to before they were touched (nil: none asked,
    /// or the host has no NUMA).
    public let numaNode: Int?

    /// `numaNode`: bind the region to that node (the RDMA device's) before its pages are touched.
    public init(bufferSize: Int, count: Int, tierSlots: Int = 0, numaNode: Int? = nil) throws(SysError) {
        precondition(count > 0 && bufferSize > 0 && tierSlots >= 0)
        let size = (bufferSize + 4095) & ~4095
        let total = (size * (count + tierSlots) + BufferPool.alignment - 1) & ~(BufferPool.alignment - 1)
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, BufferPool.alignment, total)
        guard rc == 0, let region = raw else { throw SysError("posix_memalign(\(total) bytes)", errno: rc) }
        // Advice only: a host without transparent huge pages keeps 4 KiB pages and works the same.
        _ = madvise(region, total, MADV_HUGEPAGE)
        self.numaNode = numaNode.flatMap { NUMA.bind(region, length: total, node: $0) ? $0 : nil }
        memset(region, 0, total)  // fault the pages in now (on that node), not on the first request
        self.bufferSize = size
        self.count = count
        self.tierSlots = tierSlots
        self.region = region
        self.regionSize = total
        self.privateRings = Array(repeating: nil, count: count)
        self.free = Array((0..<count).reversed())
    }

    deinit { Glibc.free(region) }

    /// Every buffer of the region, I/O and tier, in order: buffer `i` is fixed buffer `i`.
    public var buffers: [UnsafeMutableRawBufferPointer] {
        (0..<count + tierSlots).map { UnsafeMutableRawBufferPointer(start: region + $0 * bufferSize, count: bufferSize) }
    }

    /// Registers the whole region with an RDMA device, once: every buffer and tier slot can then
    /// be the source of a write.
    public func register(with device: any RDMADevice) throws(RDMAError) -> RDMAMemoryRegion {
        try device.register(region, length: regionSize)
    }

    /// Registers the whole region with `ring` as fixed buffers (one step per consumer).
    public func register(with ring: ShardRing) throws(SysError) { try ring.registerBuffers(buffers) }

    /// A ring for one blocking consumer (a fill thread) with the whole region registered: buffer
    /// `i` is its fixed buffer `i`.
    public func consumerRing(entries: UInt32 = 8) throws(SysError) -> IORing {
        let ring = try IORing(entries: entries)
        try ring.registerBuffers(buffers)
        return ring
    }

    /// The memory of buffer `i` (I/O or tier).
    public func bufferBase(_ i: Int) -> UnsafeMutableRawPointer { region + i * bufferSize }

    /// The memory of DRAM tier slot `i`, and its fixed-buffer index.
    public func tierSlot(_ i: Int) -> (base: UnsafeMutableRawPointer, fixedIndex: Int) {
        precondition(i >= 0 && i < tierSlots)
        return (region + (count + i) * bufferSize, count + i)
    }

    /// A lease on a free I/O buffer, or nil if none is free (the caller queues its request).
    public func take() -> Lease? {
        guard let i = lock.withLock({ free.popLast() }) else { return nil }
        return Lease(index: i, base: region + i * bufferSize, capacity: bufferSize)
    }

    /// Gives a lease back; it cannot be used afterwards.
    public func give(_ lease: consuming Lease) {
        let i = lease.index
        lock.withLock { free.append(i) }
        lock.signal()
    }

    /// Runs `body` with the leased buffer on `ring` (the caller's `consumerRing`), for blocking
    /// I/O by the lease's holder (a fill thread); the slot must not outlive the call.
    public func withSlot<T, E: Error>(_ lease: borrowing Lease, ring: IORing, _ body: (IOSlot) throws(E) -> T) throws(E) -> T {
        try body(IOSlot(index: lease.index, base: lease.base, capacity: lease.capacity, ring: ring, fixedIndex: Int32(lease.index)))
    }

    /// Borrows a buffer with its private ring, waiting for one if all are in use; nil if none
    /// came by the deadline (tools and the cache's own housekeeping; the serving path uses `take`).
    public func acquire(timeoutNanos: UInt64 = 30_000_000_000) -> IOSlot? {
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        defer { lock.unlock() }
        while free.isEmpty {
            if !lock.wait(untilNanos: deadline) && free.isEmpty { return nil }
        }
        let i = free.removeLast()
        let ring: IORing
        if let r = privateRings[i] {
            ring = r
        } else {
            do {
                ring = try IORing(entries: 4)
                try ring.registerBuffers([UnsafeMutableRawBufferPointer(start: region + i * bufferSize, count: bufferSize)])
            } catch {
                free.append(i)
                return nil
            }
            privateRings[i] = ring
        }
        return IOSlot(index: i, base: region + i * bufferSize, capacity: bufferSize, ring: ring, fixedIndex: 0)
    }

    /// Gives back a buffer borrowed with `acquire`.
    public func release(_ slot: IOSlot) {
        lock.withLock { free.append(slot.index) }
        lock.signal()
    }

    public var available: Int { lock.withLock { free.count } }
}
