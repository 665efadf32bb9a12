#if canImport(Glibc)
import Glibc
#endif

/// One buffer of the pool together with the io_uring it is registered with (as fixed buffer 0),
/// so a disk read lands in it with READ_FIXED and the socket sends from it: no copy on the way.
public final class IOSlot: @unchecked Sendable {
    public let index: Int
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public let ring: IORing

    init(index: Int, base: UnsafeMutableRawPointer, capacity: Int, ring: IORing) {
        self.index = index
        self.base = base
        self.capacity = capacity
        self.ring = ring
    }

    /// O_DIRECT read into the buffer at `bufferOffset` (both offsets and `count` 4 KiB-aligned).
    public func read(file: FileHandle, at offset: UInt64, count: Int, bufferOffset: Int = 0) throws(SysError) -> Int {
        precondition(bufferOffset + count <= capacity)
        try FaultInjection.check(file.path, "read")
        return try ring.perform(.readFixed(fd: file.fd, buffer: base + bufferOffset, count: count, offset: offset, bufferIndex: 0))
    }

    /// Two O_DIRECT reads into the buffer submitted together, each `(file offset, count, buffer
    /// offset)`: one wait for both. True when both read in full.
    public func readTwo(file: FileHandle, _ a: (UInt64, Int, Int), _ b: (UInt64, Int, Int)) throws(SysError) -> Bool {
        precondition(a.2 + a.1 <= capacity && b.2 + b.1 <= capacity)
        try FaultInjection.check(file.path, "read")
        let (n, m) = try ring.readPair(fd: file.fd, base: base, bufferIndex: 0, a, b)
        return n == a.1 && m == b.1
    }

    /// O_DIRECT write from the buffer.
    public func write(file: FileHandle, at offset: UInt64, count: Int, bufferOffset: Int = 0) throws(SysError) {
        precondition(bufferOffset + count <= capacity)
        try FaultInjection.check(file.path, "write")
        _ = try ring.perform(.writeFixed(fd: file.fd, buffer: base + bufferOffset, count: count, offset: offset, bufferIndex: 0))
    }
}

/// Large buffers allocated once at start from one 2 MiB-aligned, huge-page-advised region and
/// registered with io_uring; requests borrow one for their lifetime and give it back.
public final class BufferPool: @unchecked Sendable {
    public let bufferSize: Int
    public let count: Int
    private let region: UnsafeMutableRawPointer
    private var free: [IOSlot]
    private let lock = ConditionLock()

    public static let alignment = 2 * 1024 * 1024

    /// `bufferSize` is rounded up to 4 KiB.
    public init(bufferSize: Int, count: Int) throws(SysError) {
        precondition(count > 0 && bufferSize > 0)
        let size = (bufferSize + 4095) & ~4095
        let total = (size * count + BufferPool.alignment - 1) & ~(BufferPool.alignment - 1)
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, BufferPool.alignment, total)
        guard rc == 0, let region = raw else { throw SysError("posix_memalign(\(total) bytes)", errno: rc) }
        _ = madvise(region, total, MADV_HUGEPAGE)
        memset(region, 0, total)  // fault the pages in now, not on the first request
        var slots: [IOSlot] = []
        do {
            for i in 0..<count {
                let ring = try IORing(entries: 4)
                let base = region + i * size
                try ring.registerBuffers([UnsafeMutableRawBufferPointer(start: base, count: size)])
                slots.append(IOSlot(index: i, base: base, capacity: size, ring: ring))
            }
        } catch {
            slots.removeAll()
            Glibc.free(region)
            throw error
        }
        self.bufferSize = size
        self.count = count
        self.region = region
        self.free = slots
    }

    deinit { Glibc.free(region) }

    /// Borrows a buffer, waiting for one if all are in use; nil if none came by the deadline.
    public func acquire(timeoutNanos: UInt64 = 30_000_000_000) -> IOSlot? {
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        defer { lock.unlock() }
        while free.isEmpty {
            if !lock.wait(untilNanos: deadline) && free.isEmpty { return nil }
        }
        return free.removeLast()
    }

    public func release(_ slot: IOSlot) {
        lock.withLock { free.append(slot) }
        lock.signal()
    }

    public var available: Int { lock.withLock { free.count } }
}
