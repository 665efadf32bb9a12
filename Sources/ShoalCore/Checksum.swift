internal import CShoalShims

/// CRC32C (Castagnoli) over bytes; hardware-accelerated where the CPU allows.
public enum CRC32C {
    /// The CRC32C of `bytes`, continuing from `previous` (0 to start).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        update(previous, bytes.baseAddress, bytes.count)
    }

    /// The CRC32C of an array of bytes.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    @usableFromInline
    static func update(_ crc: UInt32, _ base: UnsafeRawPointer?, _ count: Int) -> UInt32 {
        guard let base, count > 0 else { return crc }
        return shoal_crc32c(crc, base, count)
    }

    /// Whether the SSE4.2 instruction is in use.
    public static var isHardwareAccelerated: Bool { shoal_crc32c_is_hardware() == 1 }
}
