#if canImport(Glibc)
import Glibc
#endif

/// Large buffers outside the pool (a client's read buffer in benchmarks): 2 MiB-aligned and
/// advised to use huge pages, so touching them first costs one fault per 2 MiB, not per 4 KiB.
public enum LargeBuffer {
    /// 2 MiB: a huge page.
    public static let alignment = 2 << 20

    public static func allocate(_ bytes: Int) -> UnsafeMutableRawBufferPointer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: LargeBuffer.alignment)
        // Advice only: without transparent huge pages the buffer works the same.
        _ = madvise(buffer.baseAddress, bytes, MADV_HUGEPAGE)
        return buffer
    }
}
