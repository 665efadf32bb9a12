/// Deterministic pseudo-random bytes for sample datasets, benchmarks and tests: the same seed
/// always gives the same bytes, so data read back can be checked without keeping a copy.
public enum SampleData {
    public static func bytes(seed: UInt64, count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0, seed: seed) }
        return out
    }

    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var i = 0
        let n = buffer.count
        while i + 8 <= n {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            buffer.storeBytes(of: state, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < n {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            buffer[i] = UInt8(truncatingIfNeeded: state)
            i += 1
        }
    }
}

/// A small deterministic generator (SplitMix64): reproducible traces, benchmarks and fuzz runs
/// from a seed.
public struct SplitMix: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
