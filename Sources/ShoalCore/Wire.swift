/// Limits on every field of the wire protocol (docs/PROTOCOL.md).
public enum WireLimits {
    public static let maxStoreName = 64
    public static let maxBucket = 255
    public static let maxKey = 1024
    public static let maxEtag = 256
    public static let maxClientName = 64
    public static let maxMessage = 1024
    /// The largest request payload a worker accepts (a READ with maximal names is ~1.6 KiB).
    public static let maxRequestPayload: UInt32 = 8 * 1024
    /// The largest response payload a client accepts: a whole maximal block plus its CRC.
    public static let maxResponsePayload: UInt32 = UInt32(BlockLayout.maxBlockSize) + 4
}

/// Frame types.
public enum FrameType: UInt8, Sendable {
    case hello = 1
    case challenge = 2
    case auth = 3
    case authOK = 4
    case stat = 5
    case statReply = 6
    case read = 7
    case readReply = 8
    /// Answer to READ from a worker running with `answerWithoutData` (a benchmark switch): the
    /// CRC32C and length of the data it would have sent, without the data.
    case readNoData = 9
    case error = 15
}

/// The fixed 16-byte frame header, little-endian:
/// magic u32 | version u8 | type u8 | status u16 | request id u32 | payload length u32.
public struct FrameHeader: Sendable, Equatable {
    public static let size = 16
    public static let magic: UInt32 = 0x4C4F_4853  // "SHOL" on the wire
    public static let version: UInt8 = 1

    public var type: UInt8
    public var status: UInt16
    public var requestID: UInt32
    public var payloadLength: UInt32

    public init(type: FrameType, status: StatusCode = .ok, requestID: UInt32, payloadLength: UInt32) {
        self.type = type.rawValue
        self.status = status.rawValue
        self.requestID = requestID
        self.payloadLength = payloadLength
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: FrameHeader.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: FrameHeader.version, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: type, toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: status.littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: requestID.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: payloadLength.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: FrameHeader.size)
        out.withUnsafeMutableBytes { encode(into: $0.baseAddress!) }
        return out
    }

    public enum DecodeError: Error, Equatable {
        case badMagic
        case unsupportedVersion(UInt8)
        case tooLarge(UInt32)
    }

    /// Decodes and checks a header; `maxPayload` bounds what the receiver will read after it.
    public static func decode(_ p: UnsafeRawPointer, maxPayload: UInt32) -> Result<FrameHeader, DecodeError> {
        let magic = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard magic == FrameHeader.magic else { return .failure(.badMagic) }
        let version = p.load(fromByteOffset: 4, as: UInt8.self)
        guard version == FrameHeader.version else { return .failure(.unsupportedVersion(version)) }
        var h = FrameHeader(type: .error, requestID: 0, payloadLength: 0)
        h.type = p.load(fromByteOffset: 5, as: UInt8.self)
        h.status = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        h.requestID = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        h.payloadLength = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        guard h.payloadLength <= maxPayload else { return .failure(.tooLarge(h.payloadLength)) }
        return .success(h)
    }
}

/// HELLO: the client's protocol versions and a name for logs.
public struct HelloMessage: Sendable, Equatable {
    public var minVersion: UInt16
    public var maxVersion: UInt16
    public var clientName: String

    public init(minVersion: UInt16 = 1, maxVersion: UInt16 = 1, clientName: String) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.clientName = clientName
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(minVersion)
        out.appendLE(maxVersion)
        out.appendString8(String(clientName.utf8.prefix(WireLimits.maxClientName)) ?? "")
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let lo = r.u16(), let hi = r.u16(), let name = r.string8(max: WireLimits.maxClientName), r.isAtEnd,
              lo <= hi
        else { return nil }
        self.init(minVersion: lo, maxVersion: hi, clientName: name)
    }
}

/// The HMAC a client proves it holds the cluster secret with.
public enum ChallengeAuth {
    public static let nonceSize = 32
    public static func response(secret: [UInt8], nonce: [UInt8]) -> [UInt8] {
        hmacSHA256(key: secret, message: Array("shoal-auth-v1".utf8) + nonce)
    }
}

/// STAT: which object; `revalidate` skips the worker's metadata cache.
public struct StatRequest: Sendable, Equatable {
    public var object: ObjectRef
    public var revalidate: Bool

    public init(object: ObjectRef, revalidate: Bool = false) {
        self.object = object
        self.revalidate = revalidate
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendObject(object)
        out.appendLE(UInt8(revalidate ? 1 : 0))
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let object = r.object(), let flags = r.u8(), r.isAtEnd else { return nil }
        self.init(object: object, revalidate: flags & 1 != 0)
    }
}

/// STAT's answer: the version and the block size the cluster cuts objects into. `stale` says the
/// store could not be reached and this is the last version the worker knew (see PROTOCOL.md).
public struct StatReply: Sendable, Equatable {
    public var version: ObjectVersion
    public var blockSize: UInt32
    public var stale: Bool

    public init(version: ObjectVersion, blockSize: UInt32, stale: Bool = false) {
        self.version = version
        self.blockSize = blockSize
        self.stale = stale
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(version.size)
        out.appendString16(version.etag)
        out.appendLE(blockSize)
        out.appendLE(UInt8(stale ? 1 : 0))
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let size = r.u64(), let etag = r.string16(max: WireLimits.maxEtag), let bs = r.u32(), let flags = r.u8(),
              r.isAtEnd
        else { return nil }
        self.init(version: ObjectVersion(size: size, etag: etag), blockSize: bs, stale: flags & 1 != 0)
    }
}

/// READ: a byte range of one block of one object version. The version (etag and size) is the
/// client's belief; the worker fills a block only after the store confirms both.
public struct ReadRequest: Sendable, Equatable {
    public var block: BlockKey
    public var offset: UInt32
    public var length: UInt32

    public init(block: BlockKey, offset: UInt32, length: UInt32) {
        self.block = block
        self.offset = offset
        self.length = length
    }

    public var objectSize: UInt64 { block.objectSize }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendObject(block.object)
        out.appendString16(block.etag)
        out.appendLE(block.objectSize)
        out.appendLE(block.blockSize)
        out.appendLE(block.index)
        out.appendLE(offset)
        out.appendLE(length)
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let object = r.object(), let etag = r.string16(max: WireLimits.maxEtag), let size = r.u64(),
              let bs = r.u32(), let index = r.u64(), let offset = r.u32(), let length = r.u32(), r.isAtEnd
        else { return nil }
        self.init(block: BlockKey(object: object, etag: etag, objectSize: size, blockSize: bs, index: index),
                  offset: offset, length: length)
    }

    /// Checks the request against the block layout; the error names what is wrong.
    public func validate() throws(ShoalError) {
        try block.object.validate()
        guard !block.etag.isEmpty else {
            throw ShoalError(.badRequest, "READ of \(block.object) names no version (empty etag): STAT the object first")
        }
        let bs = UInt64(block.blockSize)
        guard bs >= BlockLayout.minBlockSize, bs <= BlockLayout.maxBlockSize, bs % 4096 == 0 else {
            throw ShoalError(.badRequest, "block size \(bs) is outside 64 KiB-16 MiB or not a multiple of 4 KiB")
        }
        let blockLength = block.expectedLength
        guard blockLength > 0 else {
            throw ShoalError(.badRequest, "block \(block.index) is past the end of \(block.object) (\(objectSize) bytes)")
        }
        guard UInt64(offset) + UInt64(length) <= UInt64(blockLength), length > 0 else {
            throw ShoalError(.badRequest, "range \(offset)+\(length) is outside block \(block.index) (\(blockLength) bytes)")
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendObject(_ o: ObjectRef) {
        appendString8(o.store)
        appendString16(o.bucket)
        appendString16(o.key)
    }
}

extension ByteReader {
    mutating func object() -> ObjectRef? {
        guard let store = string8(max: WireLimits.maxStoreName), !store.isEmpty,
              let bucket = string16(max: WireLimits.maxBucket), !bucket.isEmpty,
              let key = string16(max: WireLimits.maxKey), !key.isEmpty
        else { return nil }
        return ObjectRef(store: store, bucket: bucket, key: key)
    }
}
