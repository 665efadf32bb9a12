internal import COpenSSL
internal import CShoalTLS
import ShoalCore

/// A failure inside OpenSSL (TLS set-up, a handshake, a cipher context), with OpenSSL's reason.
public struct CryptoError: Error, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// Drains OpenSSL's error queue of this thread into one line (empty when it held nothing).
func openSSLErrors() -> String {
    var reasons: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &text, text.count)
        reasons.append(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return reasons.joined(separator: "; ")
}

/// Tags and checks the frames of one authenticated session (docs/PROTOCOL.md, "Frame tags"):
/// AES-256-GCM used as GMAC, the frame's bytes as additional data and no ciphertext, under the
/// sender's session key, with a nonce made of the direction and the frame's sequence number.
/// A frame that is changed, dropped, replayed, reordered or injected fails the receiver's check.
/// GMAC rather than HMAC-SHA256: 4 MiB blocks are tagged several times faster (docs/DESIGN.md).
public final class FrameAuthenticator: @unchecked Sendable {
    public enum Role: Sendable { case client, worker }

    private let sendContext: OpaquePointer
    private let receiveContext: OpaquePointer
    /// A second context under the send key, for the one frame that may be streamed while
    /// others are sealed (`beginStream`).
    private let streamContext: OpaquePointer
    private var streamSequence: UInt64?
    private let sendDirection: FrameTag.Direction
    private let receiveDirection: FrameTag.Direction
    private var sendSequence: UInt64 = 0
    private var receiveSequence: UInt64 = 0

    /// True where GHASH runs with VPCLMULQDQ (CShoalTLS/gmac.c) rather than in OpenSSL's GCM.
    public static var isAccelerated: Bool { shoal_gmac_is_accelerated() == 1 }

    /// `accelerated: false` keeps every tag on OpenSSL's GCM (tests compare the two).
    public init(keys: SessionKeys, role: Role, accelerated: Bool = true) throws(CryptoError) {
        let (sendKey, receiveKey) = role == .client ? (keys.clientToWorker, keys.workerToClient) : (keys.workerToClient, keys.clientToWorker)
        sendDirection = role == .client ? .clientToWorker : .workerToClient
        receiveDirection = role == .client ? .workerToClient : .clientToWorker
        guard sendKey.count == 32, receiveKey.count == 32 else { throw CryptoError("frame tags need 32-byte session keys") }
        let fast: Int32 = accelerated ? 1 : 0
        let made = [sendKey, receiveKey, sendKey].map { key in key.withUnsafeBufferPointer { shoal_gmac_new($0.baseAddress, fast) } }
        guard let s = made[0], let r = made[1], let t = made[2] else {
            made.forEach { shoal_gmac_free($0) }
            throw CryptoError("cannot set up AES-256-GCM for frame tags: \(openSSLErrors())")
        }
        sendContext = s
        receiveContext = r
        streamContext = t
    }

    deinit {
        shoal_gmac_free(sendContext)
        shoal_gmac_free(receiveContext)
        shoal_gmac_free(streamContext)
    }

    /// The tag of one frame over its pieces (its header and payload without the tag), in order.
    private static func tag(_ ctx: OpaquePointer, _ direction: FrameTag.Direction, _ sequence: UInt64,
                            _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            _ more: [UnsafeRawBufferPointer] = [], into tag: UnsafeMutableRawPointer) -> Bool {
        guard start(ctx, direction, sequence), add(ctx, a), add(ctx, b), add(ctx, c) else { return false }
        for piece in more { guard add(ctx, piece) else { return false } }
        return final(ctx, into: tag)
    }

    private static var none: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }

    /// Sets the nonce of the frame with this sequence number.
    private static func start(_ ctx: OpaquePointer, _ direction: FrameTag.Direction, _ sequence: UInt64) -> Bool {
        withUnsafeTemporaryAllocation(byteCount: FrameTag.nonceSize, alignment: 8) { nonce in
            FrameTag.writeNonce(direction, sequence: sequence, into: nonce.baseAddress!)
            return shoal_gmac_start(ctx, nonce.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1
        }
    }

    private static func final(_ ctx: OpaquePointer, into tag: UnsafeMutableRawPointer) -> Bool {
        shoal_gmac_finish(ctx, tag.assumingMemoryBound(to: UInt8.self)) == 1
    }

    /// Adds one piece as additional data: hashed, never copied.
    private static func add(_ ctx: OpaquePointer, _ piece: UnsafeRawBufferPointer) -> Bool {
        piece.isEmpty || shoal_gmac_add(ctx, piece.baseAddress!, piece.count) == 1
    }

    private static func split(_ pieces: [UnsafeRawBufferPointer]) -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer, [UnsafeRawBufferPointer]) {
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        return (pieces.first ?? empty, pieces.count > 1 ? pieces[1] : empty, pieces.count > 2 ? Array(pieces[2...]) : [])
    }

    /// Tags the next frame this side sends over up to three pieces (header, then the rest),
    /// without gathering them in an array.
    public func seal(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                     tag: UnsafeMutableRawPointer) -> Bool {
        guard FrameAuthenticator.tag(sendContext, sendDirection, sendSequence, a, b, c, into: tag) else { return false }
        sendSequence += 1
        return true
    }

    /// Checks the next frame received (up to three pieces) against its tag.
    public func open(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                     tag: UnsafeRawBufferPointer) -> Bool {
        defer { receiveSequence += 1 }
        guard tag.count == FrameTag.size else { return false }
        return withUnsafeTemporaryAllocation(byteCount: FrameTag.size, alignment: 8) { expected in
            FrameAuthenticator.tag(receiveContext, receiveDirection, receiveSequence, a, b, c, into: expected.baseAddress!)
                && CRYPTO_memcmp(expected.baseAddress!, tag.baseAddress!, FrameTag.size) == 0
        }
    }

    /// Starts the tag of a frame sent as its bytes come; it takes the next sequence number now.
    public func beginStream(_ head: UnsafeRawBufferPointer) -> Bool {
        guard streamSequence == nil, FrameAuthenticator.start(streamContext, sendDirection, sendSequence),
              FrameAuthenticator.add(streamContext, head)
        else { return false }
        streamSequence = sendSequence
        sendSequence += 1
        return true
    }

    public func continueStream(_ piece: UnsafeRawBufferPointer) -> Bool {
        streamSequence != nil && FrameAuthenticator.add(streamContext, piece)
    }

    public func finishStream(_ tail: UnsafeRawBufferPointer, tag: UnsafeMutableRawPointer) -> Bool {
        guard streamSequence != nil else { return false }
        streamSequence = nil
        return FrameAuthenticator.add(streamContext, tail) && FrameAuthenticator.final(streamContext, into: tag)
    }

    /// Tags the next frame this side sends; writes `FrameTag.size` bytes to `tag`.
    public func seal(_ pieces: [UnsafeRawBufferPointer], tag: UnsafeMutableRawPointer) throws(CryptoError) {
        let (a, b, more) = FrameAuthenticator.split(pieces)
        guard FrameAuthenticator.tag(sendContext, sendDirection, sendSequence, a, b, FrameAuthenticator.none, more, into: tag) else {
            throw CryptoError("cannot tag a frame: \(openSSLErrors())")
        }
        sendSequence += 1
    }

    /// Tags the next frame this side sends; returns the tag.
    public func seal(_ bytes: [UInt8]) throws(CryptoError) -> [UInt8] {
        var tag = [UInt8](repeating: 0, count: FrameTag.size)
        let result = bytes.withUnsafeBytes { b in
            tag.withUnsafeMutableBytes { t in Result { () throws(CryptoError) in try seal([b], tag: t.baseAddress!) } }
        }
        try result.get()
        return tag
    }

    /// Checks the next frame received against its tag. Any failure (a wrong tag, or OpenSSL
    /// failing) is false: the caller closes the connection, so the sequence need not stay in step.
    public func open(_ pieces: [UnsafeRawBufferPointer], tag: UnsafeRawBufferPointer) -> Bool {
        defer { receiveSequence += 1 }
        guard tag.count == FrameTag.size else { return false }
        let (a, b, more) = FrameAuthenticator.split(pieces)
        return withUnsafeTemporaryAllocation(byteCount: FrameTag.size, alignment: 8) { expected in
            FrameAuthenticator.tag(receiveContext, receiveDirection, receiveSequence, a, b, FrameAuthenticator.none, more, into: expected.baseAddress!)
                && CRYPTO_memcmp(expected.baseAddress!, tag.baseAddress!, FrameTag.size) == 0
        }
    }

    /// Checks a frame received as its header and its payload, the tag in the payload's last
    /// bytes (without joining them into one array).
    public func open(header: [UInt8], payload: [UInt8]) -> Bool {
        guard header.count >= FrameHeader.size, payload.count >= FrameTag.size else { receiveSequence += 1; return false }
        return header.withUnsafeBytes { h in
            payload.withUnsafeBytes { p in
                open([UnsafeRawBufferPointer(rebasing: h.prefix(FrameHeader.size)), UnsafeRawBufferPointer(rebasing: p.dropLast(FrameTag.size))],
                     tag: UnsafeRawBufferPointer(rebasing: p.suffix(FrameTag.size)))
            }
        }
    }

    /// Checks a frame held in one array: header and payload, the tag in its last bytes.
    public func open(frame bytes: [UInt8]) -> Bool {
        open(header: Array(bytes.prefix(FrameHeader.size)), payload: Array(bytes.dropFirst(FrameHeader.size)))
    }
}

extension FrameAuthenticator: FrameSealer {
    public func sealFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer,
                          tag: UnsafeMutableRawPointer) -> Bool {
        seal(a, b, c, tag: tag)
    }

    public func openFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool {
        open(a, b, tag: tag)
    }
}
