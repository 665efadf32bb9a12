#if canImport(Glibc)
import Glibc
#endif
import ShoalSys
internal import CURing
internal import CShoalShims

/// One io shard's io_uring: created, fed and drained by one thread (`SINGLE_ISSUER` and
/// `DEFER_TASKRUN` where the kernel has them, so completions run only when the shard asks, in
/// its one `io_uring_enter` per loop pass that both submits and waits). Operations are named by
/// a 64-bit `user_data` the caller packs; nothing is allocated per operation.
///
/// Receives take their memory from a ring of provided buffers (`recv` with buffer select): an
/// idle connection holds no receive buffer, however many are open.
public final class ShardRing {
    private let ring: UnsafeMutablePointer<io_uring>
    public let entries: UInt32
    /// Whether the kernel took `SINGLE_ISSUER | DEFER_TASKRUN`.
    public let deferredTaskRun: Bool
    private var bufferRing: UnsafeMutablePointer<io_uring_buf_ring>?
    private var bufferRingBytes = 0
    private var providedBase: UnsafeMutableRawPointer?
    public private(set) var providedCount = 0
    public private(set) var providedSize = 0
    private let group: UInt16 = 1
    private var cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let batch = 256

    /// Creates the ring; call on the thread that will drive it.
    public init(entries: UInt32) throws(SysError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        var params = io_uring_params()
        params.flags = UInt32(IORING_SETUP_SINGLE_ISSUER) | UInt32(IORING_SETUP_DEFER_TASKRUN)
        var rc = io_uring_queue_init_params(entries, ring, &params)
        var deferred = true
        if rc == -EINVAL {
            // An older kernel: the same ring without the single-issuer optimisations.
            params = io_uring_params()
            deferred = false
            rc = io_uring_queue_init_params(entries, ring, &params)
        }
        if rc < 0 {
            ring.deallocate()
            throw SysError("io_uring_queue_init_params(\(entries) entries)", errno: -rc)
        }
        self.ring = ring
        self.entries = entries
        self.deferredTaskRun = deferred
        cqes = .allocate(capacity: batch)
    }

    deinit {
        if bufferRing != nil { _ = io_uring_unregister_buf_ring(ring, Int32(group)) }
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqes.deallocate()
        if let bufferRing { munmap(bufferRing, bufferRingBytes) }
        if let providedBase { free(providedBase) }
    }

    /// Registers `buffers` as the ring's fixed buffers (buffer `i` is index `i`).
    public func registerBuffers(_ buffers: [UnsafeMutableRawBufferPointer]) throws(SysError) {
        try registerFixedBuffers(ring, buffers)
    }

    /// Sets up `count` (a power of two) provided receive buffers of `size` bytes each.
    public func setUpProvidedBuffers(count: Int, size: Int) throws(SysError) {
        precondition(count > 0 && count & (count - 1) == 0 && count <= 32768)
        let bytes = (count * MemoryLayout<io_uring_buf>.stride + 4095) & ~4095
        guard let mem = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), mem != MAP_FAILED else {
            throw SysError("mmap of the provided-buffer ring", errno: currentErrno())
        }
        var raw: UnsafeMutableRawPointer?
        let arc = posix_memalign(&raw, 4096, count * size)
        guard arc == 0, let base = raw else {
            munmap(mem, bytes)
            throw SysError("posix_memalign of provided buffers", errno: arc)
        }
        let br = mem.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
        var reg = io_uring_buf_reg()
        reg.ring_addr = UInt64(UInt(bitPattern: mem))
        reg.ring_entries = UInt32(count)
        reg.bgid = group
        let rc = io_uring_register_buf_ring(ring, &reg, 0)
        if rc < 0 {
            munmap(mem, bytes)
            free(base)
            throw SysError("io_uring_register_buf_ring", errno: -rc)
        }
        io_uring_buf_ring_init(br)
        let mask = io_uring_buf_ring_mask(UInt32(count))
        for i in 0..<count {
            io_uring_buf_ring_add(br, base + i * size, UInt32(size), UInt16(i), mask, Int32(i))
        }
        io_uring_buf_ring_advance(br, Int32(count))
        bufferRing = br
        bufferRingBytes = bytes
        providedBase = base
        providedCount = count
        providedSize = size
    }

    /// The memory of provided buffer `id`.
    public func providedBuffer(_ id: UInt16) -> UnsafeMutableRawPointer { providedBase! + Int(id) * providedSize }

    /// Gives provided buffer `id` back to the kernel once its bytes are consumed.
    public func recycle(_ id: UInt16) {
        guard let br = bufferRing else { return }
        io_uring_buf_ring_add(br, providedBuffer(id), UInt32(providedSize), id, io_uring_buf_ring_mask(UInt32(providedCount)), 0)
        io_uring_buf_ring_advance(br, 1)
    }

    /// The next submission entry, submitting what is queued first when the queue is full.
    private func sqe() throws(SysError) -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        let rc = io_uring_submit(ring)
        if rc < 0 && rc != -EBUSY && rc != -EAGAIN { throw SysError("io_uring_submit", errno: -rc) }
        guard let s = io_uring_get_sqe(ring) else { throw SysError("io_uring: submission queue full", errno: EBUSY) }
        return s
    }

    /// Accepts connections on `fd` until cancelled: one completion per connection (its fd).
    public func acceptMultishot(fd: Int32, userData: UInt64) throws(SysError) {
        let s = try sqe()
        io_uring_prep_multishot_accept(s, fd, nil, nil, shoal_sock_cloexec())
        io_uring_sqe_set_data64(s, userData)
    }

    /// Receives into provided buffers until cancelled, the socket ends or the buffers run out:
    /// one completion per receive, whose flags name its buffer (`providedBufferID`) and say
    /// whether it stays armed (`hasMore`).
    public func receiveMultishot(fd: Int32, userData: UInt64) throws(SysError) {
        let s = try sqe()
        io_uring_prep_recv_multishot(s, fd, nil, 0, 0)
        s.pointee.flags |= UInt8(1 << IOSQE_BUFFER_SELECT_BIT)
        s.pointee.buf_group = group
        io_uring_sqe_set_data64(s, userData)
    }

    /// Cancels the operation whose user data is `target`; the cancel's own completion carries
    /// `userData`, the cancelled one's ends with `ECANCELED`.
    public func cancel(_ target: UInt64, userData: UInt64) throws(SysError) {
        let s = try sqe()
        io_uring_prep_cancel64(s, target, 0)
        io_uring_sqe_set_data64(s, userData)
    }

    /// Sends the message `msg` (a `msghdr`) describes; it and its iovecs must stay put until
    /// the completion.
    /// `zeroCopy`: SENDMSG_ZC, whose result completion carries `hasMore`, and a second one
    /// (`isNotification`) says when the kernel no longer reads the buffers.
    public func sendMessage(fd: Int32, _ msg: UnsafeMutableRawPointer, userData: UInt64, zeroCopy: Bool = false) throws(SysError) {
        let s = try sqe()
        if zeroCopy {
            io_uring_prep_sendmsg_zc(s, fd, msg.assumingMemoryBound(to: msghdr.self), UInt32(shoal_msg_nosignal()))
        } else {
            io_uring_prep_sendmsg(s, fd, msg.assumingMemoryBound(to: msghdr.self), UInt32(shoal_msg_nosignal()))
        }
        io_uring_sqe_set_data64(s, userData)
    }

    /// O_DIRECT read into fixed buffer `bufferIndex` at `buffer`.
    public func readFixed(file: FileHandle, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, bufferIndex: Int,
                          userData: UInt64) throws(SysError) {
        let s = try sqe()
        io_uring_prep_read_fixed(s, file.fd, buffer, UInt32(count), offset, Int32(bufferIndex))
        io_uring_sqe_set_data64(s, userData)
    }

    /// A plain read (the shard's wake-up eventfd).
    public func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, userData: UInt64) throws(SysError) {
        let s = try sqe()
        io_uring_prep_read(s, fd, buffer, UInt32(count), 0)
        io_uring_sqe_set_data64(s, userData)
    }

    /// Submits what is queued and waits for at least one completion or `timeoutNanos`: one
    /// `io_uring_enter`.
    public func submitAndWait(timeoutNanos: UInt64) throws(SysError) {
        var ts = __kernel_timespec(tv_sec: Int64(timeoutNanos / 1_000_000_000), tv_nsec: Int64(timeoutNanos % 1_000_000_000))
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        let rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
        if rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN {
            throw SysError("io_uring_submit_and_wait_timeout", errno: -rc)
        }
    }

    /// Hands each completion ready now to `body` (user data, result, flags); returns how many.
    @discardableResult
    public func drain(_ body: (UInt64, Int32, UInt32) -> Void) -> Int {
        var total = 0
        while true {
            let n = Int(io_uring_peek_batch_cqe(ring, cqes, UInt32(batch)))
            if n == 0 { return total }
            for i in 0..<n {
                let c = cqes[i]!.pointee
                body(c.user_data, c.res, c.flags)
            }
            io_uring_cq_advance(ring, UInt32(n))
            total += n
        }
    }

    /// Completion flags.
    public static func hasMore(_ flags: UInt32) -> Bool { flags & UInt32(IORING_CQE_F_MORE) != 0 }
    public static func isNotification(_ flags: UInt32) -> Bool { flags & UInt32(IORING_CQE_F_NOTIF) != 0 }
    public static func providedBufferID(_ flags: UInt32) -> UInt16? {
        flags & UInt32(IORING_CQE_F_BUFFER) != 0 ? UInt16(flags >> UInt32(IORING_CQE_BUFFER_SHIFT)) : nil
    }
}

/// An eventfd other threads write to wake a shard (its ring keeps a read of it armed).
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws(SysError) {
        let fd = shoal_eventfd()
        guard fd >= 0 else { throw SysError("eventfd", errno: currentErrno()) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Wakes the reader. A full counter (never, in practice) already means "wake up".
    public func signal() {
        var one: UInt64 = 1
        while write(fd, &one, 8) < 0 && currentErrno() == EINTR {}
    }
}
