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
    public static var isHardwareAccelerated: Bool { shoal_crc32c_is_hardware() >= 1 }

    /// Whether long inputs are folded with VPCLMULQDQ (CShoalShims/shims.c).
    public static var foldsWithVPCLMULQDQ: Bool { shoal_crc32c_is_hardware() == 2 }

    /// The CRC32C without VPCLMULQDQ folding (tests compare the two).
    static func unfolded(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return previous }
        return shoal_crc32c_unfolded(previous, base, bytes.count)
    }

    /// The CRC32C of `A || B` from `crc(A)`, `crc(B)` and B's length: no byte read again. The
    /// register is linear over GF(2), so `crc(A || B) = zeros(crc(A), |B|) ^ crc(B)`, where
    /// `zeros` runs a register through |B| zero bytes (a 32x32 bit matrix, made by squaring).
    public static func combine(_ first: UInt32, _ second: UInt32, secondLength: Int) -> UInt32 {
        guard secondLength > 0 else { return first }
        return apply(zeroOperator(bytes: secondLength), first) ^ second
    }

    /// The CRC32C of consecutive pieces from theirs: all `pieceLength` long but the last, which
    /// is `lastLength` long. `operators` gives the zero-byte operator of a length (a cache of
    /// `zeroOperator`, since making one costs dozens of matrix squarings).
    public static func combine(pieces: [UInt32], pieceLength: Int, lastLength: Int,
                               operators: (Int) -> [UInt32] = { zeroOperator(bytes: $0) }) -> UInt32 {
        guard var crc = pieces.first else { return 0 }
        guard pieces.count > 1 else { return crc }
        let whole = operators(pieceLength)
        let last = lastLength == pieceLength ? whole : operators(lastLength)
        for i in 1..<pieces.count { crc = apply(i == pieces.count - 1 ? last : whole, crc) ^ pieces[i] }
        return crc
    }

    /// The matrix (32 columns) that runs a CRC32C register through `bytes` zero bytes.
    public static func zeroOperator(bytes: Int) -> [UInt32] {
        // One zero bit: a shift, with the reflected polynomial fed back.
        var bit = [UInt32](repeating: 0, count: 32)
        bit[0] = 0x82F6_3B78
        for n in 1..<32 { bit[n] = 1 << (n - 1) }
        var power = square(square(square(bit)))  // eight zero bits: one byte
        var result = identity
        var n = bytes
        while n > 0 {
            if n & 1 == 1 { result = multiply(power, result) }
            n >>= 1
            if n > 0 { power = square(power) }
        }
        return result
    }

    private static let identity: [UInt32] = (0..<32).map { UInt32(1) << $0 }

    @inline(__always)
    static func apply(_ matrix: [UInt32], _ vector: UInt32) -> UInt32 {
        var sum: UInt32 = 0
        var v = vector
        var i = 0
        while v != 0 {
            if v & 1 == 1 { sum ^= matrix[i] }
            v >>= 1
            i += 1
        }
        return sum
    }

    private static func square(_ m: [UInt32]) -> [UInt32] { multiply(m, m) }

    /// The matrix of applying `b`, then `a`.
    private static func multiply(_ a: [UInt32], _ b: [UInt32]) -> [UInt32] { b.map { apply(a, $0) } }
}
