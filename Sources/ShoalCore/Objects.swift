/// An object in a named store: `(store, bucket, key)`.
public struct ObjectRef: Hashable, Sendable, CustomStringConvertible {
    public var store: String
    public var bucket: String
    public var key: String

    public init(store: String, bucket: String, key: String) {
        self.store = store
        self.bucket = bucket
        self.key = key
    }

    /// `s3://bucket/key` (with `store@` in front of the bucket when not the default store).
    public var description: String {
        store == ObjectRef.defaultStore ? "s3://\(bucket)/\(key)" : "s3://\(store)@\(bucket)/\(key)"
    }

    public static let defaultStore = "default"

    /// Parses `s3://bucket/key` or `s3://store@bucket/key`.
    public static func parse(_ url: String, defaultStore: String = ObjectRef.defaultStore) throws(ShoalError) -> ObjectRef {
        guard url.hasPrefix("s3://") else {
            throw ShoalError(.badRequest, "'\(url)' is not an s3:// URL (expected s3://bucket/key)")
        }
        let rest = url.dropFirst(5)
        guard let slash = rest.firstIndex(of: "/") else {
            throw ShoalError(.badRequest, "'\(url)' names no key (expected s3://bucket/key)")
        }
        var bucketPart = String(rest[..<slash])
        let key = String(rest[rest.index(after: slash)...])
        var store = defaultStore
        if let at = bucketPart.firstIndex(of: "@") {
            store = String(bucketPart[..<at])
            bucketPart = String(bucketPart[bucketPart.index(after: at)...])
        }
        let ref = ObjectRef(store: store, bucket: bucketPart, key: key)
        try ref.validate()
        return ref
    }

    /// The dataset an object belongs to, for statistics: its bucket and first path component
    /// (`s3://bucket/imagenet/`), or the bucket for keys without a '/'.
    public var dataset: String {
        // Built in one string: this runs for every block filled (its statistics and its tag).
        var out = store == ObjectRef.defaultStore ? "s3://" : "s3://\(store)@"
        out += bucket
        out += "/"
        if let slash = key.utf8.firstIndex(of: UInt8(ascii: "/")) { out += key[...slash] }
        return out
    }

    /// A 16-bit tag of `dataset`, kept with each cached block (per-dataset block counts).
    public var datasetTag: UInt16 { ObjectRef.tag(ofDataset: dataset) }

    public static func tag(ofDataset name: String) -> UInt16 {
        var h: UInt32 = 0x811C_9DC5
        for b in name.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return UInt16(truncatingIfNeeded: h ^ (h >> 16))
    }

    /// Checks the limits the wire protocol sets on each field.
    public func validate() throws(ShoalError) {
        if store.isEmpty || store.utf8.count > WireLimits.maxStoreName {
            throw ShoalError(.badRequest, "store name must be 1-\(WireLimits.maxStoreName) bytes, got '\(store)'")
        }
        if bucket.isEmpty || bucket.utf8.count > WireLimits.maxBucket {
            throw ShoalError(.badRequest, "bucket name must be 1-\(WireLimits.maxBucket) bytes, got '\(bucket)'")
        }
        if key.isEmpty || key.utf8.count > WireLimits.maxKey {
            throw ShoalError(.badRequest, "object key must be 1-\(WireLimits.maxKey) bytes (\(self))")
        }
    }
}

/// What is known of an object's current version.
public struct ObjectVersion: Hashable, Sendable {
    public var size: UInt64
    public var etag: String

    public init(size: UInt64, etag: String) {
        self.size = size
        self.etag = etag
    }

    /// True when `text` holds a control character (below 0x20, or DEL): such an etag cannot be
    /// sent in an HTTP header without changing the request around it.
    public static func hasControlCharacters(_ text: String) -> Bool {
        text.utf8.contains { $0 < 0x20 || $0 == 0x7F }
    }
}

/// The full identity of a cached block: which object, which version (etag and size), which slice.
/// The object's size is part of the identity so that a block's length follows from its key:
/// a block stored under a key is refused unless its length is `expectedLength`.
extension ObjectRef {
    /// Where the object's metadata (its STAT) and its first block are placed: its names
    /// (store, bucket, key, each with its u16 length, as a block key starts) hashed.
    public var placementID: BlockID {
        var out: [UInt8] = []
        for name in [store, bucket, key] {
            out.appendLE(UInt16(truncatingIfNeeded: name.utf8.count))
            out += Array(name.utf8)
        }
        return BlockID(hashing: out)
    }
}

public struct BlockKey: Hashable, Sendable, CustomStringConvertible {
    public var object: ObjectRef
    public var etag: String
    public var objectSize: UInt64
    public var blockSize: UInt32
    public var index: UInt64

    public init(object: ObjectRef, etag: String, objectSize: UInt64, blockSize: UInt32, index: UInt64) {
        self.object = object
        self.etag = etag
        self.objectSize = objectSize
        self.blockSize = blockSize
        self.index = index
    }

    /// The block of `version` of `object` at `index`.
    public init(object: ObjectRef, version: ObjectVersion, blockSize: UInt32, index: UInt64) {
        self.init(object: object, etag: version.etag, objectSize: version.size, blockSize: blockSize, index: index)
    }

    public var version: ObjectVersion { ObjectVersion(size: objectSize, etag: etag) }

    /// The length this block has in its object version (0 if the index is past the end).
    public var expectedLength: Int {
        Int(BlockLayout(blockSize: UInt64(blockSize)).blockLength(index: index, objectSize: objectSize))
    }

    /// The block's first byte in the object (saturating: checked keys never overflow).
    public var objectOffset: UInt64 { index.multipliedReportingOverflow(by: UInt64(blockSize)).partialValue }

    /// The canonical byte encoding: it is hashed into the block ID and stored in the block's header.
    public var encoded: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// The length of `encoded`.
    public var encodedCount: Int {
        20 + 8 + object.store.utf8.count + object.bucket.utf8.count + object.key.utf8.count + etag.utf8.count
    }

    /// Writes `encoded` into `out` (at least `encodedCount` bytes); returns the count.
    @discardableResult
    public func encode(into out: UnsafeMutableRawBufferPointer) -> Int {
        var at = 0
        func put<T: FixedWidthInteger>(_ v: T) {
            withUnsafeBytes(of: v.littleEndian) { out.baseAddress!.advanced(by: at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            at += MemoryLayout<T>.size
        }
        func put(_ field: String) {
            var field = field
            field.withUTF8 { utf8 in
                put(UInt16(truncatingIfNeeded: utf8.count))
                if utf8.count > 0 { out.baseAddress!.advanced(by: at).copyMemory(from: utf8.baseAddress!, byteCount: utf8.count) }
                at += utf8.count
            }
        }
        put(object.store)
        put(object.bucket)
        put(object.key)
        put(etag)
        put(objectSize)
        put(blockSize)
        put(index)
        return at
    }

    /// Decodes `encoded`; nil if malformed.
    public init?(encoded: [UInt8]) {
        var reader = ByteReader(encoded)
        guard let store = reader.string16(), let bucket = reader.string16(), let key = reader.string16(),
              let etag = reader.string16(), let size = reader.u64(), let bs = reader.u32(), let idx = reader.u64(), reader.isAtEnd
        else { return nil }
        self.init(object: ObjectRef(store: store, bucket: bucket, key: key), etag: etag, objectSize: size, blockSize: bs, index: idx)
    }

    /// Decodes a key as a client sent it, with the wire's limits on every name (docs/PROTOCOL.md);
    /// nil if malformed or over a limit.
    public init?(decoding raw: UnsafeRawBufferPointer) {
        guard let f = BlockKeyFields(parsing: raw) else { return nil }
        func text(_ range: Range<Int>) -> String { String(decoding: UnsafeRawBufferPointer(rebasing: raw[range]), as: UTF8.self) }
        self.init(object: ObjectRef(store: text(f.store), bucket: text(f.bucket), key: text(f.key)), etag: text(f.etag),
                  objectSize: f.objectSize, blockSize: f.blockSize, index: f.index)
    }

    /// Where the block is placed: block 0 with its object's metadata (`ObjectRef.placementID`),
    /// so one request to one worker can resolve a small object's version and serve its bytes;
    /// every other block by its ID.
    public var placementID: BlockID { index == 0 ? object.placementID : id }

    /// The block's ID: `encoded`, hashed without a heap allocation.
    public var id: BlockID {
        withUnsafeTemporaryAllocation(byteCount: encodedCount, alignment: 8) { buffer in
            let n = encode(into: buffer)
            return BlockID(hashing: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    public var description: String { "\(object)#\(index)@\(etag)+\(objectSize)/\(blockSize)" }
}

/// Where the parts of a block key's canonical encoding lie, checked against the wire's limits
/// (every name's length, UTF-8, non-empty store, bucket and key) without making strings.
public struct BlockKeyFields: Sendable {
    public let store: Range<Int>
    public let bucket: Range<Int>
    public let key: Range<Int>
    public let etag: Range<Int>
    public let objectSize: UInt64
    public let blockSize: UInt32
    public let index: UInt64

    public init?(parsing raw: UnsafeRawBufferPointer) {
        var r = RawReader(raw)
        guard let store = r.utf8Field16(max: WireLimits.maxStoreName), !store.isEmpty,
              let bucket = r.utf8Field16(max: WireLimits.maxBucket), !bucket.isEmpty,
              let key = r.utf8Field16(max: WireLimits.maxKey), !key.isEmpty,
              let etag = r.utf8Field16(max: WireLimits.maxEtag),
              let size = r.u64(), let bs = r.u32(), let idx = r.u64(), r.isAtEnd
        else { return nil }
        self.store = store
        self.bucket = bucket
        self.key = key
        self.etag = etag
        objectSize = size
        blockSize = bs
        index = idx
    }
}

/// A 128-bit hash of a `BlockKey`: the index key and the placement input.
public struct BlockID: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// MurmurHash3 x64-128 of `bytes` (see `BlockHash`).
    public init(hashing bytes: UnsafeRawBufferPointer) {
        let (h1, h2) = BlockHash.hash(bytes)
        self.init(high: h1, low: h2)
    }

    public init(hashing bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { BlockID(hashing: $0) }
    }

    public var description: String {
        let hex = (0..<16).map { i -> UInt8 in
            let word = i < 8 ? high : low
            return UInt8(truncatingIfNeeded: word >> (UInt64(7 - i % 8) * 8))
        }
        return hex.hexString
    }
}

/// How an object is cut into blocks.
public struct BlockLayout: Sendable, Equatable {
    public var blockSize: UInt64

    public init(blockSize: UInt64) {
        self.blockSize = blockSize
    }

    public static let minBlockSize: UInt64 = 64 * 1024
    public static let maxBlockSize: UInt64 = 16 * 1024 * 1024
    public static let defaultBlockSize: UInt64 = 4 * 1024 * 1024

    public func blockCount(objectSize: UInt64) -> UInt64 {
        guard blockSize > 0, objectSize > 0 else { return 0 }
        return objectSize / blockSize + (objectSize % blockSize == 0 ? 0 : 1)
    }

    /// The length of block `index` of an object of `objectSize` bytes (the last one is short);
    /// 0 past the end (also for indexes whose offset would overflow: peers send these).
    public func blockLength(index: UInt64, objectSize: UInt64) -> UInt64 {
        let (start, overflow) = index.multipliedReportingOverflow(by: blockSize)
        guard !overflow, start < objectSize else { return 0 }
        return min(blockSize, objectSize - start)
    }

    /// The pieces of `[offset, offset+length)`: block index, offset in the block, length, offset in the range.
    public func pieces(offset: UInt64, length: UInt64) -> [BlockPiece] {
        var result: [BlockPiece] = []
        guard blockSize > 0, offset <= UInt64.max - length else { return result }
        var position = offset
        let end = offset + length
        while position < end {
            let index = position / blockSize
            let inBlock = position - index * blockSize
            let n = min(blockSize - inBlock, end - position)
            result.append(BlockPiece(index: index, offsetInBlock: UInt32(inBlock), length: UInt32(n), offsetInRange: position - offset))
            position += n
        }
        return result
    }
}

/// A slice of one block within a larger read.
public struct BlockPiece: Sendable, Equatable {
    public var index: UInt64
    public var offsetInBlock: UInt32
    public var length: UInt32
    public var offsetInRange: UInt64

    public init(index: UInt64, offsetInBlock: UInt32, length: UInt32, offsetInRange: UInt64) {
        self.index = index
        self.offsetInBlock = offsetInBlock
        self.length = length
        self.offsetInRange = offsetInRange
    }
}

/// A byte range written as `START-END` (inclusive end, as HTTP), `START-`, `-SUFFIX`, `START+LENGTH`,
/// with human units: `0-1MiB`, `4MiB+64KiB`.
public struct ByteRangeSpec: Sendable, Equatable {
    public enum Form: Sendable, Equatable {
        case fromTo(UInt64, UInt64)
        case from(UInt64)
        case suffix(UInt64)
        case startLength(UInt64, UInt64)
    }

    public var form: Form

    public static func parse(_ text: String) -> ByteRangeSpec? {
        if let plus = text.firstIndex(of: "+") {
            guard let s = ByteSize.parse(String(text[..<plus])), let l = ByteSize.parse(String(text[text.index(after: plus)...]))
            else { return nil }
            return ByteRangeSpec(form: .startLength(s, l))
        }
        guard let dash = text.firstIndex(of: "-") else { return nil }
        let a = String(text[..<dash])
        let b = String(text[text.index(after: dash)...])
        if a.isEmpty { return ByteSize.parse(b).map { ByteRangeSpec(form: .suffix($0)) } }
        guard let start = ByteSize.parse(a) else { return nil }
        if b.isEmpty { return ByteRangeSpec(form: .from(start)) }
        guard let end = ByteSize.parse(b), end >= start else { return nil }
        return ByteRangeSpec(form: .fromTo(start, end))
    }

    /// Where the range starts (nil for a suffix, which never starts past the end).
    public var start: UInt64? {
        switch form {
        case .fromTo(let s, _), .from(let s), .startLength(let s, _): s
        case .suffix: nil
        }
    }

    /// Like `resolve`, but a range that starts past the end of a non-empty object is an error
    /// naming the object's size (a clipped empty answer would look like an empty object).
    public func resolveWithinObject(size: UInt64) throws(ShoalError) -> (offset: UInt64, length: UInt64) {
        if let start, start >= size, start > 0 {
            throw ShoalError(.badRequest, "the range starts at byte \(start), past the end of the object (\(size) bytes, \(ByteSize.format(size))); "
                             + "ranges start at 0 and the last byte is \(size == 0 ? "none (it is empty)" : String(size - 1))")
        }
        return resolve(size: size)
    }

    /// The (offset, length) this range covers in an object of `size` bytes, clipped to it.
    public func resolve(size: UInt64) -> (offset: UInt64, length: UInt64) {
        switch form {
        case .fromTo(let s, let e):
            guard s < size else { return (size, 0) }
            return (s, min(e, size - 1) - s + 1)
        case .from(let s):
            return s < size ? (s, size - s) : (size, 0)
        case .suffix(let n):
            let n = min(n, size)
            return (size - n, n)
        case .startLength(let s, let l):
            guard s < size else { return (size, 0) }
            return (s, min(l, size - s))
        }
    }
}

/// One entry of a listing.
public struct ObjectEntry: Sendable, Equatable {
    public var key: String
    public var version: ObjectVersion

    public init(key: String, version: ObjectVersion) {
        self.key = key
        self.version = version
    }
}

/// A page of a listing; `continuation` is nil on the last page.
public struct ObjectListing: Sendable, Equatable {
    public var entries: [ObjectEntry]
    public var continuation: String?

    public init(entries: [ObjectEntry], continuation: String?) {
        self.entries = entries
        self.continuation = continuation
    }
}
