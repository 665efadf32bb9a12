#if canImport(Glibc)
import Glibc
#endif
import ShoalSys
internal import CURing

/// An io_uring owned by one thread at a time (it is not safe to share), with buffers registered
/// once so reads and writes use the fixed-buffer opcodes.
public final class IORing: @unchecked Sendable {
    private let ring: UnsafeMutablePointer<io_uring>
    public let entries: UInt32

    public init(entries: UInt32 = 8) throws(SysError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        let rc = io_uring_queue_init(entries, ring, 0)
        if rc < 0 {
            ring.deallocate()
            throw SysError("io_uring_queue_init", errno: -rc)
        }
        self.ring = ring
        self.entries = entries
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// Registers buffers; fixed reads and writes name them by index.
    public func registerBuffers(_ buffers: [UnsafeMutableRawBufferPointer]) throws(SysError) {
        try registerFixedBuffers(ring, buffers)
    }

    public enum Op {
        case readFixed(fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, bufferIndex: Int32)
        case writeFixed(fd: Int32, buffer: UnsafeRawPointer, count: Int, offset: UInt64, bufferIndex: Int32)
    }

    /// Submits one operation and waits for it; returns bytes transferred. Short transfers are
    /// continued until done (or end of file for reads).
    public func perform(_ op: Op) throws(SysError) -> Int {
        switch op {
        case .readFixed(let fd, let buffer, let count, let offset, let index):
            var done = 0
            while done < count {
                let n = try submitOne("io_uring read_fixed") { sqe in
                    io_uring_prep_read_fixed(sqe, fd, buffer + done, UInt32(count - done), offset + UInt64(done), index)
                }
                if n == 0 { break }
                done += n
            }
            return done
        case .writeFixed(let fd, let buffer, let count, let offset, let index):
            var done = 0
            while done < count {
                let n = try submitOne("io_uring write_fixed") { sqe in
                    io_uring_prep_write_fixed(sqe, fd, UnsafeMutableRawPointer(mutating: buffer) + done,
                                              UInt32(count - done), offset + UInt64(done), index)
                }
                if n == 0 { throw SysError("io_uring write_fixed made no progress", errno: EIO) }
                done += n
            }
            return done
        }
    }

    /// Two fixed-buffer reads, `(file offset, count, buffer offset)` from `base`, submitted
    /// together; returns the bytes each read (a short read is continued alone).
    public func readPair(fd: Int32, base: UnsafeMutableRawPointer, bufferIndex: Int32,
                         _ a: (UInt64, Int, Int), _ b: (UInt64, Int, Int)) throws(SysError) -> (Int, Int) {
        func prep(_ op: (UInt64, Int, Int), tag: UInt64) throws(SysError) {
            guard let sqe = io_uring_get_sqe(ring) else { throw SysError("io_uring read_fixed: submission queue full", errno: EBUSY) }
            io_uring_prep_read_fixed(sqe, fd, base + op.2, UInt32(op.1), op.0, bufferIndex)
            io_uring_sqe_set_data64(sqe, tag)
        }
        try prep(a, tag: 0)
        try prep(b, tag: 1)
        var rc = io_uring_submit_and_wait(ring, 2)
        while rc == -EINTR { rc = io_uring_submit_and_wait(ring, 2) }
        if rc < 0 { throw SysError("io_uring read_fixed: submit", errno: -rc) }
        var results: (Int32, Int32) = (0, 0)
        for _ in 0..<2 {
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            var wrc = io_uring_wait_cqe(ring, &cqe)
            while wrc == -EINTR { wrc = io_uring_wait_cqe(ring, &cqe) }
            if wrc < 0 { throw SysError("io_uring read_fixed: wait", errno: -wrc) }
            if io_uring_cqe_get_data64(cqe) == 0 { results.0 = cqe!.pointee.res } else { results.1 = cqe!.pointee.res }
            io_uring_cqe_seen(ring, cqe)
        }
        // Both completions are reaped before an error is thrown, so none is left for the next op.
        let worst = min(results.0, results.1)
        if worst < 0 { throw SysError("io_uring read_fixed", errno: -worst) }
        func finish(_ op: (UInt64, Int, Int), _ done: Int) throws(SysError) -> Int {
            guard done > 0 && done < op.1 else { return done }
            return try done + perform(.readFixed(fd: fd, buffer: base + op.2 + done, count: op.1 - done,
                                                 offset: op.0 + UInt64(done), bufferIndex: bufferIndex))
        }
        return (try finish(a, Int(results.0)), try finish(b, Int(results.1)))
    }

    private func submitOne(_ what: String, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) throws(SysError) -> Int {
        guard let sqe = io_uring_get_sqe(ring) else { throw SysError("\(what): submission queue full", errno: EBUSY) }
        prep(sqe)
        io_uring_sqe_set_data64(sqe, 1)
        var rc = io_uring_submit_and_wait(ring, 1)
        while rc == -EINTR { rc = io_uring_submit_and_wait(ring, 1) }
        if rc < 0 { throw SysError("\(what): submit", errno: -rc) }
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        var wrc = io_uring_wait_cqe(ring, &cqe)
        while wrc == -EINTR { wrc = io_uring_wait_cqe(ring, &cqe) }
        if wrc < 0 { throw SysError("\(what): wait", errno: -wrc) }
        let res = cqe!.pointee.res
        io_uring_cqe_seen(ring, cqe)
        if res < 0 { throw SysError(what, errno: -res) }
        return Int(res)
    }
}

/// Registers `buffers` as `ring`'s fixed buffers (buffer `i` is index `i`), saying what to raise
/// when the locked-memory limit is the reason it fails.
func registerFixedBuffers(_ ring: UnsafeMutablePointer<io_uring>, _ buffers: [UnsafeMutableRawBufferPointer]) throws(SysError) {
        var iovecs = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let rc = io_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count))
        if rc < 0 {
            let hint = rc == -ENOMEM ? " (locked-memory limit too low: raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity)" : ""
            throw SysError("io_uring_register_buffers\(hint)", errno: -rc)
        }
}
