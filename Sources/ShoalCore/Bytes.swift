extension Array where Element == UInt8 {
    @inlinable public mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        var v = value.littleEndian
        Swift.withUnsafeBytes(of: &v) { self.append(contentsOf: $0) }
    }

    /// Appends a string with a 1-byte length prefix.
    public mutating func appendString8(_ s: String) {
        let b = Array(s.utf8)
        appendLE(UInt8(b.count))
        self += b
    }

    /// Appends a string with a 2-byte length prefix.
    public mutating func appendString16(_ s: String) {
        let b = Array(s.utf8)
        appendLE(UInt16(b.count))
        self += b
    }
}

/// Reads little-endian fields from a byte buffer; every read is bounds-checked and returns nil
/// past the end, so a malformed frame can never read outside it.
public struct ByteReader {
    private let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    public var isAtEnd: Bool { position == bytes.count }
    public var remaining: Int { bytes.count - position }

    public mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { return nil }
        var v: T = 0
        for i in 0..<n { v |= T(bytes[position + i]) << (8 * i) }
        position += n
        return v
    }

    public mutating func u8() -> UInt8? { integer(UInt8.self) }
    public mutating func u16() -> UInt16? { integer(UInt16.self) }
    public mutating func u32() -> UInt32? { integer(UInt32.self) }
    public mutating func u64() -> UInt64? { integer(UInt64.self) }

    public mutating func bytes(_ n: Int) -> [UInt8]? {
        guard n >= 0, remaining >= n else { return nil }
        defer { position += n }
        return Array(bytes[position..<position + n])
    }

    /// A UTF-8 string of `n` bytes; nil if short or not valid UTF-8.
    public mutating func string(_ n: Int) -> String? {
        guard let b = bytes(n) else { return nil }
        return String(validating: b, as: UTF8.self)
    }

    public mutating func string8(max: Int = 255) -> String? {
        guard let n = u8(), Int(n) <= max else { return nil }
        return string(Int(n))
    }

    public mutating func string16(max: Int = 65535) -> String? {
        guard let n = u16(), Int(n) <= max else { return nil }
        return string(Int(n))
    }
}

/// Reads little-endian fields in place from bytes that arrived (a frame in a receive buffer):
/// bounds-checked like `ByteReader`, without copying the bytes into arrays first.
public struct RawReader {
    private let bytes: UnsafeRawBufferPointer
    public private(set) var position = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var isAtEnd: Bool { position == bytes.count }
    public var remaining: Int { bytes.count - position }

    public mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        let n = MemoryLayout<T>.size
        guard remaining >= n, let base = bytes.baseAddress else { return nil }
        defer { position += n }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: position, as: T.self))
    }

    public mutating func u16() -> UInt16? { integer(UInt16.self) }
    public mutating func u32() -> UInt32? { integer(UInt32.self) }
    public mutating func u64() -> UInt64? { integer(UInt64.self) }

    /// Where a UTF-8 string with a 2-byte length prefix of at most `max` bytes lies, checked
    /// without making the string; nil if short or invalid.
    public mutating func utf8Field16(max: Int) -> Range<Int>? {
        guard let n = u16(), Int(n) <= max, remaining >= Int(n) else { return nil }
        let range = position..<position + Int(n)
        guard RawReader.isValidUTF8(UnsafeRawBufferPointer(rebasing: bytes[range])) else { return nil }
        position += Int(n)
        return range
    }

    /// True when `bytes` are well-formed UTF-8 (no allocation).
    public static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if !bytes.contains(where: { $0 >= 0x80 }) { return true }
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// A UTF-8 string with a 2-byte length prefix of at most `max` bytes; nil if short or invalid.
    public mutating func string16(max: Int) -> String? {
        guard let n = u16(), Int(n) <= max, remaining >= Int(n) else { return nil }
        defer { position += Int(n) }
        return String(validating: UnsafeRawBufferPointer(rebasing: bytes[position..<position + Int(n)]), as: UTF8.self)
    }
}
