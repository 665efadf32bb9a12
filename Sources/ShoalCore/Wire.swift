/// Limits on every field of the wire protocol (docs/PROTOCOL.md).
public enum WireLimits {
    public static let maxStoreName = 64
    public static let maxBucket = 255
    public static let maxKey = 1024
    public static let maxEtag = 256
    public static let maxClientName = 64
    public static let maxMessage = 1024
    /// The largest request payload a worker accepts (a READ with maximal names is ~1.7 KiB).
    public static let maxRequestPayload: UInt32 = 8 * 1024
    /// The most requests a worker lets one connection keep in flight (it may announce fewer in
    /// AUTH_OK); a client that sends more is not read until replies go out.
    public static let maxInFlight: UInt16 = 64
    /// The largest response payload a client accepts: a whole maximal block and its CRC.
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
    /// Reserved for batched reads of many small ranges of one object version (docs/PROTOCOL.md);
    /// a worker of this release answers it with `bad_request` and keeps the connection.
    case readv = 10
    /// The cluster's members as the worker sees them (a client given one worker learns the rest).
    case members = 11
    case membersReply = 12
    /// One page of the keys under a prefix, as the worker's store lists them.
    case list = 13
    case listReply = 14
    case error = 15
    /// Connects an RDMA queue pair to this connection (docs/PROTOCOL.md, "RDMA"): the client's
    /// queue pair in the request, the worker's in the reply.
    case rdmaConnect = 16
    case rdmaConnectReply = 17
}

/// The fixed 16-byte frame header, little-endian:
/// magic u32 | version u8 | type u8 | status u16 | request id u32 | payload length u32.
public struct FrameHeader: Sendable, Equatable {
    public static let size = 16
    public static let magic: UInt32 = 0x4C4F_4853  // "SHOL" on the wire
    /// The first byte of every frame on the wire (of the little-endian magic).
    public static let firstByte = UInt8(truncatingIfNeeded: magic)
    /// The protocol version this build speaks (docs/PROTOCOL.md). Version 3: replies matched by
    /// request id and allowed out of order; READ carries flags, a view epoch and an optional RDMA
    /// buffer descriptor; AUTH_OK announces the connection's in-flight limit. Version 6: RDMA
    /// (RDMA_CONNECT, and READs with a descriptor answered by an RDMA WRITE and READ_NODATA).
    public static let version: UInt8 = 6

    /// The version written on the wire: ours, except in the refusal sent to a peer of another
    /// version, which is written in the peer's version so that it can read why.
    public var version: UInt8 = FrameHeader.version
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
        p.storeBytes(of: version, toByteOffset: 4, as: UInt8.self)
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

/// HELLO: the client's protocol versions, its nonce, flags, and a name for logs.
public struct HelloMessage: Sendable, Equatable {
    /// Flag bit 0: the client asks for frames without tags (a benchmark switch; the worker must
    /// allow it). Both proofs cover HELLO, so a relay cannot set it.
    public static let untaggedFramesFlag: UInt8 = 1

    public var minVersion: UInt16
    public var maxVersion: UInt16
    /// Nc: fresh bytes from the client's random source (`MutualAuth.nonceSize`).
    public var nonce: [UInt8]
    public var flags: UInt8
    public var clientName: String

    public init(minVersion: UInt16 = UInt16(FrameHeader.version), maxVersion: UInt16 = UInt16(FrameHeader.version),
                nonce: [UInt8], flags: UInt8 = 0, clientName: String) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.nonce = nonce
        self.flags = flags
        self.clientName = clientName
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(minVersion)
        out.appendLE(maxVersion)
        out += nonce
        out.appendLE(flags)
        out.appendString8(String(clientName.utf8.prefix(WireLimits.maxClientName)) ?? "")
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let lo = r.u16(), let hi = r.u16(), let nonce = r.bytes(MutualAuth.nonceSize), let flags = r.u8(),
              let name = r.string8(max: WireLimits.maxClientName), r.isAtEnd, lo <= hi
        else { return nil }
        self.init(minVersion: lo, maxVersion: hi, nonce: nonce, flags: flags, clientName: name)
    }
}

/// CHALLENGE: the version the worker chose, its nonce Nw, and its proof that it holds the secret.
public struct ChallengeMessage: Sendable, Equatable {
    public var version: UInt16
    public var nonce: [UInt8]
    public var proof: [UInt8]

    public init(version: UInt16, nonce: [UInt8], proof: [UInt8]) {
        self.version = version
        self.nonce = nonce
        self.proof = proof
    }

    /// What the client's proof covers: the CHALLENGE without the worker's proof.
    public var signedPart: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(version)
        out += nonce
        return out
    }

    public var encoded: [UInt8] { signedPart + proof }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let v = r.u16(), let nonce = r.bytes(MutualAuth.nonceSize), let proof = r.bytes(MutualAuth.proofSize), r.isAtEnd
        else { return nil }
        self.init(version: v, nonce: nonce, proof: proof)
    }
}

/// The keys one session's frames are authenticated with, one per direction, so that a frame
/// can never be reflected back to its sender as if the other side had sent it.
public struct SessionKeys: Sendable, Equatable {
    public var clientToWorker: [UInt8]
    public var workerToClient: [UInt8]

    public init(clientToWorker: [UInt8], workerToClient: [UInt8]) {
        self.clientToWorker = clientToWorker
        self.workerToClient = workerToClient
    }
}

/// The mutual handshake's proofs and the session keys (docs/PROTOCOL.md, "Handshake"). Each
/// proof is an HMAC-SHA256 with the cluster secret over a label, the whole HELLO and the
/// worker's nonce, so a relay that changes any byte of HELLO (versions, nonce, name) or of
/// CHALLENGE makes a proof fail; the labels keep one side's proof from serving as the other's.
public enum MutualAuth {
    public static let nonceSize = 32
    public static let proofSize = 32

    /// The worker's proof, checked by the client before it proves anything itself.
    public static func workerProof(secret: [UInt8], hello: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        hmacSHA256(key: secret, message: Array("shoal-worker-v2".utf8) + hello + workerNonce)
    }

    /// The client's proof, over HELLO and the signed part of CHALLENGE.
    public static func clientProof(secret: [UInt8], hello: [UInt8], challenge: [UInt8]) -> [UInt8] {
        hmacSHA256(key: secret, message: Array("shoal-client-v2".utf8) + hello + challenge)
    }

    /// Both sides derive the same two keys from the secret and both nonces; neither nonce alone
    /// (an attacker may pick one of them) decides them.
    public static func sessionKeys(secret: [UInt8], clientNonce: [UInt8], workerNonce: [UInt8]) -> SessionKeys {
        SessionKeys(clientToWorker: hmacSHA256(key: secret, message: Array("shoal-session-c2w-v2".utf8) + clientNonce + workerNonce),
                    workerToClient: hmacSHA256(key: secret, message: Array("shoal-session-w2c-v2".utf8) + clientNonce + workerNonce))
    }
}

/// Per-frame authentication tags (docs/PROTOCOL.md, "Frame tags"): after the handshake every
/// frame's payload ends with a 16-byte tag over its header and the rest of its payload, keyed
/// by the sender's session key and bound to a per-direction sequence number.
public enum FrameTag {
    public static let size = 16

    public enum Direction: UInt32, Sendable {
        case clientToWorker = 1
        case workerToClient = 2
    }

    public static let nonceSize = 12

    /// Writes the 12-byte GCM nonce of frame `sequence` in `direction` (direction u32 | sequence
    /// u64) to `p`. Unique per key because each key signs one direction and the sequence never
    /// repeats.
    public static func writeNonce(_ direction: Direction, sequence: UInt64, into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: direction.rawValue.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: sequence.littleEndian, toByteOffset: 4, as: UInt64.self)
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

/// LIST: one page of the objects under `prefix` in a bucket, listed by the worker with its own
/// credentials: `store str8 | bucket str16 | prefix str16 | continuation str16 (empty: the first
/// page)`. The prefix may be empty (the whole bucket). Pages are the store's (S3: up to 1000 keys).
public struct ListRequest: Sendable, Equatable {
    public static let maxContinuation = 4096
    /// The most entries one reply carries (a reply stays under 1.3 MiB with maximal names).
    public static let maxEntries = 1000
    public var store: String
    public var bucket: String
    public var prefix: String
    public var continuation: String?

    public init(store: String, bucket: String, prefix: String, continuation: String? = nil) {
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        self.continuation = continuation
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendString8(store)
        out.appendString16(bucket)
        out.appendString16(prefix)
        out.appendString16(continuation ?? "")
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let store = r.string8(max: WireLimits.maxStoreName), !store.isEmpty,
              let bucket = r.string16(max: WireLimits.maxBucket), !bucket.isEmpty,
              let prefix = r.string16(max: WireLimits.maxKey),
              let token = r.string16(max: ListRequest.maxContinuation), r.isAtEnd
        else { return nil }
        self.init(store: store, bucket: bucket, prefix: prefix, continuation: token.isEmpty ? nil : token)
    }
}

/// LIST_REPLY: `count u16 | count × (key str16 | size u64 | etag str16) | continuation str16`
/// (empty on the last page).
public enum ListReply {
    public static func encode(_ listing: ObjectListing) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLE(UInt16(listing.entries.count))
        for e in listing.entries {
            out.appendString16(e.key)
            out.appendLE(e.version.size)
            out.appendString16(e.version.etag)
        }
        out.appendString16(listing.continuation ?? "")
        return out
    }

    public static func decode(_ bytes: [UInt8]) -> ObjectListing? {
        var r = ByteReader(bytes)
        guard let count = r.u16(), count <= ListRequest.maxEntries else { return nil }
        var entries: [ObjectEntry] = []
        entries.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let key = r.string16(max: WireLimits.maxKey), !key.isEmpty, let size = r.u64(),
                  let etag = r.string16(max: WireLimits.maxEtag)
            else { return nil }
            entries.append(ObjectEntry(key: key, version: ObjectVersion(size: size, etag: etag)))
        }
        guard let token = r.string16(max: ListRequest.maxContinuation), r.isAtEnd else { return nil }
        return ObjectListing(entries: entries, continuation: token.isEmpty ? nil : token)
    }
}

/// MEMBERS_REPLY: the view a worker routes by, `epoch u64 | count u16 | count × (id str16 |
/// address str16 | weight f64 as u64 bits | state u8 | transports u8)`, transports 0 when the
/// worker's view does not say, 1 for TCP only, 2 for TCP and RDMA; epoch 0 and no members when
/// it has none.
public enum MembersReply {
    static let states: [MemberState] = [.joining, .active, .draining]

    public static func encode(_ view: MembershipView) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLE(view.epoch)
        out.appendLE(UInt16(view.members.count))
        for m in view.members {
            out.appendString16(m.id)
            out.appendString16(m.address)
            out.appendLE(m.weight.bitPattern)
            out.appendLE(UInt8(states.firstIndex(of: m.state)!))
            out.appendLE(UInt8(m.rdma.map { $0 ? 2 : 1 } ?? 0))
        }
        return out
    }

    /// The view, checked as any view is; nil when the bytes are not one.
    public static func decode(_ bytes: [UInt8]) -> MembershipView? {
        var r = ByteReader(bytes)
        guard let epoch = r.u64(), let count = r.u16() else { return nil }
        var members: [Member] = []
        for _ in 0..<count {
            guard let id = r.string16(max: 1024), let address = r.string16(max: 1024), let bits = r.u64(), let s = r.u8(), Int(s) < states.count,
                  let t = r.u8(), t <= 2
            else { return nil }
            members.append(Member(id: id, address: address, weight: Double(bitPattern: bits), state: states[Int(s)], rdma: t == 0 ? nil : t == 2))
        }
        guard r.isAtEnd else { return nil }
        return try? MembershipView(epoch: epoch, members: members)
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

/// Where a client registered memory for a READ's data (RDMA, docs/PROTOCOL.md): the worker
/// writes the reply's bytes there instead of sending them on the TCP connection.
public struct RDMADescriptor: Sendable, Equatable {
    public var address: UInt64
    public var rkey: UInt32
    public var length: UInt32

    public init(address: UInt64, rkey: UInt32, length: UInt32) {
        self.address = address
        self.rkey = rkey
        self.length = length
    }
}

/// RDMA_CONNECT and its reply: a reliable-connected queue pair's number, its port's GID (16
/// bytes; RoCEv2, the IPv4-mapped address the peer reaches it by) and its first packet sequence
/// number (24 bits, random). The worker connects its queue pair to the client's and answers with
/// its own; the client then connects to it.
public struct RDMAConnectMessage: Sendable, Equatable {
    public var queuePair: UInt32
    public var gid: [UInt8]
    public var psn: UInt32

    public static let size = 24

    public init(queuePair: UInt32, gid: [UInt8], psn: UInt32) {
        self.queuePair = queuePair
        self.gid = gid
        self.psn = psn & 0xFF_FFFF
    }

    public var encoded: [UInt8] {
        var b: [UInt8] = []
        b.appendLE(queuePair)
        b += gid.prefix(16)
        b += [UInt8](repeating: 0, count: max(0, 16 - gid.count))
        b.appendLE(psn)
        return b
    }

    /// nil unless exactly 24 bytes with a 24-bit sequence number.
    public init?(decoding p: [UInt8]) {
        guard p.count == RDMAConnectMessage.size else { return nil }
        func u32(_ at: Int) -> UInt32 { UInt32(p[at]) | UInt32(p[at + 1]) << 8 | UInt32(p[at + 2]) << 16 | UInt32(p[at + 3]) << 24 }
        queuePair = u32(0)
        gid = Array(p[4..<20])
        psn = u32(20)
        guard psn <= 0xFF_FFFF else { return nil }
    }
}

/// A block key's canonical encoding (`BlockKey.encoded`), held without a heap allocation when
/// it fits `inlineCapacity` bytes (the usual case: short names and a hex etag), in an array when
/// longer.
public struct BlockKeyBytes: Sendable, Equatable {
    public static let inlineCapacity = 160
    private var inline: InlineArray<160, UInt8>
    private var heap: [UInt8]?
    public let count: Int

    public init(_ raw: UnsafeRawBufferPointer) {
        inline = InlineArray(repeating: 0)
        count = raw.count
        if raw.count <= BlockKeyBytes.inlineCapacity {
            heap = nil
            if raw.count > 0 {
                var span = inline.mutableSpan
                span.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
            }
        } else {
            heap = Array(raw)
        }
    }

    public init(_ bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { BlockKeyBytes($0) }
    }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        if let heap {
            return try heap.withUnsafeBytes { b in Result { () throws(E) -> R in try body(b) } }.get()
        }
        let result = inline.span.withUnsafeBytes { b in Result { () throws(E) -> R in try body(UnsafeRawBufferPointer(rebasing: b[..<count])) } }
        return try result.get()
    }

    public var array: [UInt8] { withUnsafeBytes { Array($0) } }

    public static func == (a: BlockKeyBytes, b: BlockKeyBytes) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.elementsEqual(y) } }
    }
}

/// READ: a byte range of one block of one object version. The version (etag and size) is the
/// client's belief; the worker fills a block only after the store confirms both.
///
/// On the wire: flags u16 | view epoch u64 | offset u32 | length u32 | key length u16 | the
/// block key in its canonical encoding (`BlockKey.encoded`, the bytes hashed into the block id
/// and stored with the block) | an RDMA descriptor when flag bit 1 is set.
///
/// A decoded READ keeps the key as its bytes and its numbers (size, block size, index): serving
/// a cached block makes no string and no allocation; `block` decodes the names when a fill or
/// an error message needs them.
public struct ReadRequest: Sendable, Equatable {
    /// Flag bit 0: fill the block into the cache and answer without data (warm-up).
    public static let fillOnlyFlag: UInt16 = 1
    /// Flag bit 1: an RDMA descriptor follows the key.
    public static let rdmaFlag: UInt16 = 2
    /// Flag bit 2: answer from this worker's cache only; a miss is answered `not_found` and
    /// nothing is filled (a block's new owner asking its previous one, worker to worker).
    public static let cachedOnlyFlag: UInt16 = 4
    /// Flag bit 3: the client knows only the object's name. The worker (the owner of the
    /// object's first block, which is placed with its metadata) resolves the version from its
    /// metadata cache or the store, answers it with a STAT_REPLY, then sends the READ_REPLY of
    /// block 0 from byte 0: `length` bytes, fewer where the object ends. The key names block 0
    /// with an empty etag and an object size equal to its block size (placeholders); no other
    /// flag goes with it. A small object in one round trip.
    public static let resolveFlag: UInt16 = 8
    /// Flag bit 4: is the block cached here? READ_NODATA (origin `cache`) if this worker holds it,
    /// status `not_found` if not; nothing is read, filled or counted. An empty range of a block
    /// with a version, no other flag (`shoal warm --check`, `shoal ls --cached`).
    public static let probeFlag: UInt16 = 16
    /// Flag bit 5, with bit 0 only: a hand-over push. The sender is the block's previous owner and
    /// holds it: the new owner asks it for the block whatever its recent answers (a previous owner
    /// that missed many in a row is otherwise asked for a sample of the misses only).
    public static let pushFlag: UInt16 = 32
    static let knownFlags: UInt16 = fillOnlyFlag | rdmaFlag | cachedOnlyFlag | resolveFlag | probeFlag | pushFlag

    public var offset: UInt32
    public var length: UInt32
    public var flags: UInt16
    /// The cluster view the client routed this request by (0: none).
    public var epoch: UInt64
    public var rdma: RDMADescriptor?
    /// The block's id, hashed from the key bytes once, where the request was made or decoded.
    public let id: BlockID
    /// The block key's canonical encoding, as it arrived (compared with the record's on disk
    /// and with the DRAM tier's, without encoding the key again).
    public let keyBytes: BlockKeyBytes
    public let objectSize: UInt64
    public let blockSize: UInt32
    public let index: UInt64
    /// Byte counts of the key's names, in the encoding's order: store, bucket, key, etag.
    private let nameCounts: (UInt16, UInt16, UInt16, UInt16)
    /// The key as the client made it (nil on the worker, which decodes it only when needed).
    private let made: BlockKey?

    public init(block: BlockKey, offset: UInt32, length: UInt32, flags: UInt16 = 0, epoch: UInt64 = 0, rdma: RDMADescriptor? = nil) {
        self.offset = offset
        self.length = length
        self.flags = rdma == nil ? flags & ~ReadRequest.rdmaFlag : flags | ReadRequest.rdmaFlag
        self.epoch = epoch
        self.rdma = rdma
        let encoded = block.encoded
        keyBytes = BlockKeyBytes(encoded)
        id = BlockID(hashing: encoded)
        objectSize = block.objectSize
        blockSize = block.blockSize
        index = block.index
        func count(_ s: String) -> UInt16 { UInt16(truncatingIfNeeded: s.utf8.count) }
        nameCounts = (count(block.object.store), count(block.object.bucket), count(block.object.key), count(block.etag))
        made = block
    }

    /// The same READ with `descriptor` (flag bit 1 set), or without one (nil).
    public func with(rdma descriptor: RDMADescriptor?) -> ReadRequest {
        var r = self
        r.rdma = descriptor
        r.flags = descriptor == nil ? flags & ~ReadRequest.rdmaFlag : flags | ReadRequest.rdmaFlag
        return r
    }

    /// The block key (decoded from its bytes on the worker: this allocates its names).
    public var block: BlockKey {
        if let made { return made }
        return keyBytes.withUnsafeBytes { BlockKey(decoding: $0) }
            ?? BlockKey(object: ObjectRef(store: "", bucket: "", key: ""), etag: "", objectSize: objectSize, blockSize: blockSize, index: index)
    }

    public var isFillOnly: Bool { flags & ReadRequest.fillOnlyFlag != 0 }
    public var resolvesVersion: Bool { flags & ReadRequest.resolveFlag != 0 }
    public var isCachedOnly: Bool { flags & ReadRequest.cachedOnlyFlag != 0 }
    public var isProbe: Bool { flags & ReadRequest.probeFlag != 0 }
    public var isPush: Bool { flags & ReadRequest.pushFlag != 0 }

    /// The length this block has in its object version (0 if the index is past the end).
    public var expectedLength: Int {
        Int(BlockLayout(blockSize: UInt64(blockSize)).blockLength(index: index, objectSize: objectSize))
    }

    /// The store the block comes from (a small string, no allocation, for names up to 15 bytes).
    public var storeName: String {
        keyBytes.withUnsafeBytes { String(decoding: UnsafeRawBufferPointer(rebasing: $0[2..<2 + Int(nameCounts.0)]), as: UTF8.self) }
    }

    /// Calls `body` with the bytes naming the object (store, bucket and key, each with its
    /// length): the start of the key's encoding, the same for every block of the object.
    public func withObjectBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        let n = 6 + Int(nameCounts.0) + Int(nameCounts.1) + Int(nameCounts.2)
        return keyBytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    /// The etag's bytes.
    private func withEtagBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        let at = 8 + Int(nameCounts.0) + Int(nameCounts.1) + Int(nameCounts.2)
        return keyBytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[at..<at + Int(nameCounts.3)])) }
    }

    /// The encoding's length.
    public var encodedCount: Int { 20 + keyBytes.count + (rdma == nil ? 0 : 16) }

    /// Where the block is placed (`BlockKey.placementID`): block 0 by its object's names.
    public var placementID: BlockID { index == 0 ? withObjectBytes { BlockID(hashing: $0) } : id }

    /// Writes the payload into `out` (at least `encodedCount` bytes); returns the count.
    @discardableResult
    public func encode(into out: UnsafeMutableRawBufferPointer) -> Int {
        let p = out.baseAddress!
        p.storeBytes(of: flags.littleEndian, toByteOffset: 0, as: UInt16.self)
        p.storeBytes(of: epoch.littleEndian, toByteOffset: 2, as: UInt64.self)
        p.storeBytes(of: offset.littleEndian, toByteOffset: 10, as: UInt32.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 14, as: UInt32.self)
        let n = keyBytes.count
        p.storeBytes(of: UInt16(truncatingIfNeeded: n).littleEndian, toByteOffset: 18, as: UInt16.self)
        keyBytes.withUnsafeBytes { if n > 0 { (p + 20).copyMemory(from: $0.baseAddress!, byteCount: n) } }
        var at = 20 + n
        if let rdma {
            p.storeBytes(of: rdma.address.littleEndian, toByteOffset: at, as: UInt64.self)
            p.storeBytes(of: rdma.rkey.littleEndian, toByteOffset: at + 8, as: UInt32.self)
            p.storeBytes(of: rdma.length.littleEndian, toByteOffset: at + 12, as: UInt32.self)
            at += 16
        }
        return at
    }

    public var encoded: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    public init?(decoding bytes: [UInt8]) {
        guard let r = bytes.withUnsafeBytes({ ReadRequest(decoding: $0) }) else { return nil }
        self = r
    }

    /// Decodes a READ payload in place, without a heap allocation for keys that fit
    /// `BlockKeyBytes.inlineCapacity`: the names are checked (lengths, limits, UTF-8) but not
    /// made into strings, and the block id is hashed from the key bytes as they arrived.
    public init?(decoding raw: UnsafeRawBufferPointer) {
        guard raw.count >= 20, let p = raw.baseAddress else { return nil }
        let flags = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        guard flags & ~ReadRequest.knownFlags == 0 else { return nil }
        let keyCount = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 18, as: UInt16.self)))
        let rdmaCount = flags & ReadRequest.rdmaFlag != 0 ? 16 : 0
        guard raw.count == 20 + keyCount + rdmaCount else { return nil }
        let key = UnsafeRawBufferPointer(rebasing: raw[20..<20 + keyCount])
        guard let fields = BlockKeyFields(parsing: key) else { return nil }
        self.flags = flags
        self.epoch = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt64.self))
        self.offset = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 10, as: UInt32.self))
        self.length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt32.self))
        if rdmaCount > 0 {
            let at = 20 + keyCount
            rdma = RDMADescriptor(address: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                                  rkey: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)),
                                  length: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at + 12, as: UInt32.self)))
        } else {
            rdma = nil
        }
        keyBytes = BlockKeyBytes(key)
        id = BlockID(hashing: key)
        objectSize = fields.objectSize
        blockSize = fields.blockSize
        index = fields.index
        nameCounts = (UInt16(fields.store.count), UInt16(fields.bucket.count), UInt16(fields.key.count), UInt16(fields.etag.count))
        made = nil
    }

    public static func == (a: ReadRequest, b: ReadRequest) -> Bool {
        a.keyBytes == b.keyBytes && a.offset == b.offset && a.length == b.length && a.flags == b.flags && a.epoch == b.epoch && a.rdma == b.rdma
    }

    /// Checks the request against the block layout; the error names what is wrong. (The names'
    /// lengths were checked when it was decoded or made; only an error decodes them.)
    public func validate() throws(ShoalError) {
        if made != nil { try block.object.validate() }
        if resolvesVersion {
            guard flags == ReadRequest.resolveFlag, index == 0, offset == 0, length > 0, nameCounts.3 == 0 else {
                throw ShoalError(.badRequest, "a READ that resolves the version (flag bit 3) is of block 0 from byte 0, names no etag and has no other flag")
            }
            let bs = UInt64(blockSize)
            guard bs >= BlockLayout.minBlockSize, bs <= BlockLayout.maxBlockSize, bs % 4096 == 0, UInt64(length) <= bs else {
                throw ShoalError(.badRequest, "block size \(bs) is outside 64 KiB-16 MiB or not a multiple of 4 KiB, or the length is more than a block")
            }
            return
        }
        guard nameCounts.3 > 0 else {
            throw ShoalError(.badRequest, "READ of \(block.object) names no version (empty etag): STAT the object first")
        }
        // The etag becomes an If-Match (or If-Unmodified-Since) header of the worker's request to
        // its store: a CR or LF in it would add headers, or a whole request, of the client's making.
        guard !withEtagBytes({ $0.contains { $0 < 0x20 || $0 == 0x7F } }) else {
            throw ShoalError(.badRequest, "READ of \(block.object) names a version with control characters; an etag is one line of printable text: STAT the object first")
        }
        guard Int(nameCounts.3) <= WireLimits.maxEtag else {
            throw ShoalError(.badRequest, "READ of \(block.object) names an etag of \(nameCounts.3) bytes; the limit is \(WireLimits.maxEtag)")
        }
        guard !isProbe || (flags == ReadRequest.probeFlag && offset == 0 && length == 0) else {
            throw ShoalError(.badRequest, "READ of \(block.object) asks whether a block is cached (flag bit 4) with a range or another flag")
        }
        guard !isPush || isFillOnly else {
            throw ShoalError(.badRequest, "READ of \(block.object) is a hand-over push (flag bit 5) without fill-only (bit 0)")
        }
        guard !(isFillOnly && isCachedOnly) else {
            throw ShoalError(.badRequest, "READ of \(block.object) asks to fill the block and not to fill it (flags fill-only and cached-only)")
        }
        let bs = UInt64(blockSize)
        guard bs >= BlockLayout.minBlockSize, bs <= BlockLayout.maxBlockSize, bs % 4096 == 0 else {
            throw ShoalError(.badRequest, "block size \(bs) is outside 64 KiB-16 MiB or not a multiple of 4 KiB")
        }
        let blockLength = expectedLength
        guard blockLength > 0 else {
            throw ShoalError(.badRequest, "block \(index) is past the end of \(block.object) (\(objectSize) bytes)")
        }
        guard UInt64(offset) + UInt64(length) <= UInt64(blockLength), length > 0 || isFillOnly || isProbe else {
            throw ShoalError(.badRequest, "range \(offset)+\(length) is outside block \(index) (\(blockLength) bytes)")
        }
    }
}

/// Where the block a READ_NODATA answers for came from: this worker's cache (or a fill another
/// request had under way), the object store, or the block's previous owner after a view change.
/// A warm counts what it cost the store by it.
public enum BlockOrigin: UInt8, Sendable, Equatable {
    case cache = 0
    case store = 1
    case peer = 2
}

/// READ_NODATA's payload: the CRC32C and length of the range a READ_REPLY would have carried,
/// and where the block came from.
public struct NoDataReply: Sendable, Equatable {
    public var crc: UInt32
    public var length: UInt32
    public var origin: BlockOrigin

    public static let size = 9

    public init(crc: UInt32, length: UInt32, origin: BlockOrigin) {
        self.crc = crc
        self.length = length
        self.origin = origin
    }

    public var encoded: [UInt8] {
        var b: [UInt8] = []
        b.appendLE(crc)
        b.appendLE(length)
        b.append(origin.rawValue)
        return b
    }

    /// nil: not 9 bytes, or an origin this release does not know.
    public init?(decoding p: UnsafeRawBufferPointer) {
        guard p.count == NoDataReply.size, let origin = BlockOrigin(rawValue: p[8]) else { return nil }
        crc = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        self.origin = origin
    }
}

/// A READ_REPLY is its header, the data, then a trailer: the CRC32C of the data (and, with tags,
/// the tag over all three). The CRC comes after the data so that a worker can send the data as it
/// arrives from the store, before the whole block is there.
public enum ReadReplyHead {
    /// The header alone.
    public static let size = FrameHeader.size

    /// Writes a READ_REPLY's header for `dataCount` bytes of data (and `tagSize` bytes of tag).
    public static func encode(requestID: UInt32, dataCount: Int, tagSize: Int, into p: UnsafeMutableRawPointer) {
        FrameHeader(type: .readReply, requestID: requestID, payloadLength: UInt32(dataCount + ReadReplyTrailer.size + tagSize)).encode(into: p)
    }
}

/// The CRC32C after a READ_REPLY's data (the tag, when the session has tags, follows it).
public enum ReadReplyTrailer {
    public static let size = 4

    public static func encode(crc: UInt32, into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: crc.littleEndian, toByteOffset: 0, as: UInt32.self)
    }

    public static func crc(_ p: UnsafeRawPointer) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
    }
}

/// AUTH_OK: the cluster's block size and how many requests this connection may keep in flight.
public struct AuthOKMessage: Sendable, Equatable {
    public var blockSize: UInt32
    public var maxInFlight: UInt16

    public init(blockSize: UInt32, maxInFlight: UInt16) {
        self.blockSize = blockSize
        self.maxInFlight = maxInFlight
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(blockSize)
        out.appendLE(maxInFlight)
        return out
    }

    public init?(decoding bytes: [UInt8]) {
        var r = ByteReader(bytes)
        guard let bs = r.u32(), let n = r.u16(), r.isAtEnd, n > 0 else { return nil }
        self.init(blockSize: bs, maxInFlight: n)
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
