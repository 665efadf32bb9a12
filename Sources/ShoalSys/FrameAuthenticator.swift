internal import COpenSSL
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

    public init(keys: SessionKeys, role: Role) throws(CryptoError) {
        let (sendKey, receiveKey) = role == .client ? (keys.clientToWorker, keys.workerToClient) : (keys.workerToClient, keys.clientToWorker)
        sendDirection = role == .client ? .clientToWorker : .workerToClient
        receiveDirection = role == .client ? .workerToClient : .clientToWorker
        guard sendKey.count == 32, receiveKey.count == 32 else { throw CryptoError("frame tags need 32-byte session keys") }
        guard let s = FrameAuthenticator.makeContext(key: sendKey) else {
            throw CryptoError("cannot set up AES-256-GCM for frame tags: \(openSSLErrors())")
        }
        guard let r = FrameAuthenticator.makeContext(key: receiveKey) else {
            EVP_CIPHER_CTX_free(s)
            throw CryptoError("cannot set up AES-256-GCM for frame tags: \(openSSLErrors())")
        }
        guard let t = FrameAuthenticator.makeContext(key: sendKey) else {
            EVP_CIPHER_CTX_free(s)
            EVP_CIPHER_CTX_free(r)
            throw CryptoError("cannot set up AES-256-GCM for frame tags: \(openSSLErrors())")
        }
        sendContext = s
        receiveContext = r
        streamContext = t
    }

    deinit {
        EVP_CIPHER_CTX_free(sendContext)
        EVP_CIPHER_CTX_free(receiveContext)
        EVP_CIPHER_CTX_free(streamContext)
    }

    private static func makeContext(key: [UInt8]) -> OpaquePointer? {
        guard let ctx = EVP_CIPHER_CTX_new() else { return nil }
        // The key is set once; each frame sets only its nonce (12 bytes, GCM's default length).
        guard EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key, nil) == 1 else {
            EVP_CIPHER_CTX_free(ctx)
            return nil
        }
        return ctx
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
            return EVP_EncryptInit_ex(ctx, nil, nil, nil, nonce.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1
        }
    }

    private static func final(_ ctx: OpaquePointer, into tag: UnsafeMutableRawPointer) -> Bool {
        var outLength: Int32 = 0
        var none: UInt8 = 0
        guard EVP_EncryptFinal_ex(ctx, &none, &outLength) == 1 else { return false }
        return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(FrameTag.size), tag) == 1
    }

    /// Adds one piece as additional data: hashed, never copied.
    private static func add(_ ctx: OpaquePointer, _ piece: UnsafeRawBufferPointer) -> Bool {
        var outLength: Int32 = 0
        var offset = 0
        while offset < piece.count {
            let n = min(piece.count - offset, Int(Int32.max))
            let p = piece.baseAddress!.advanced(by: offset).assumingMemoryBound(to: UInt8.self)
            guard EVP_EncryptUpdate(ctx, nil, &outLength, p, Int32(n)) == 1 else { return false }
            offset += n
        }
        return true
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
