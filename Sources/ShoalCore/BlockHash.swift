/// MurmurHash3 (x64, 128-bit, seed 0): the block ID hash. Not cryptographic, and it need not be:
/// the full block key is stored with every block and compared on every read, so a collision (even
/// a crafted one) costs a miss, never a wrong byte. It costs tens of nanoseconds for a block key,
/// where SHA-256 cost about 1.5 µs on every request.
enum BlockHash {
    private static let c1: UInt64 = 0x87C3_7B91_1142_53D5
    private static let c2: UInt64 = 0x4CF5_AD43_2745_937F

    @inline(__always)
    private static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }

    @inline(__always)
    private static func fmix(_ k: UInt64) -> UInt64 {
        var k = k
        k ^= k >> 33
        k &*= 0xFF51_AFD7_ED55_8CCD
        k ^= k >> 33
        k &*= 0xC4CE_B9FE_1A85_EC53
        k ^= k >> 33
        return k
    }

    @inline(__always)
    private static func mixK1(_ k: UInt64) -> UInt64 { rotl(k &* c1, 31) &* c2 }

    @inline(__always)
    private static func mixK2(_ k: UInt64) -> UInt64 { rotl(k &* c2, 33) &* c1 }

    /// The two 64-bit halves (h1, h2); as bytes, h1 then h2, each little-endian.
    static func hash(_ data: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        var h1: UInt64 = 0
        var h2: UInt64 = 0
        let n = data.count
        let blocks = n / 16
        guard let base = data.baseAddress else { return (0, 0) }
        for i in 0..<blocks {
            let k1 = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i * 16, as: UInt64.self))
            let k2 = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i * 16 + 8, as: UInt64.self))
            h1 ^= mixK1(k1)
            h1 = rotl(h1, 27) &+ h2
            h1 = h1 &* 5 &+ 0x52DC_E729
            h2 ^= mixK2(k2)
            h2 = rotl(h2, 31) &+ h1
            h2 = h2 &* 5 &+ 0x3849_5AB5
        }
        let tail = base + blocks * 16
        let rest = n & 15
        var k1: UInt64 = 0
        var k2: UInt64 = 0
        if rest > 8 {
            for i in stride(from: rest - 1, through: 8, by: -1) { k2 ^= UInt64(tail.load(fromByteOffset: i, as: UInt8.self)) << UInt64((i - 8) * 8) }
            h2 ^= mixK2(k2)
        }
        if rest > 0 {
            for i in stride(from: min(rest, 8) - 1, through: 0, by: -1) { k1 ^= UInt64(tail.load(fromByteOffset: i, as: UInt8.self)) << UInt64(i * 8) }
            h1 ^= mixK1(k1)
        }
        h1 ^= UInt64(n)
        h2 ^= UInt64(n)
        h1 &+= h2
        h2 &+= h1
        h1 = fmix(h1)
        h2 = fmix(h2)
        h1 &+= h2
        h2 &+= h1
        return (h1, h2)
    }
}
