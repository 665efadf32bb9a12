import Testing
@testable import ShoalCore

@Suite struct WireCodecTests {
    let object = ObjectRef(store: "default", bucket: "bkt", key: "dir/file.bin")

    @Test func headerRoundTripsAndRejectsBadInput() {
        let h = FrameHeader(type: .read, status: .notFound, requestID: 42, payloadLength: 100)
        let bytes = h.bytes
        bytes.withUnsafeBytes { p in
            #expect(FrameHeader.decode(p.baseAddress!, maxPayload: 1000) == .success(h))
            #expect(FrameHeader.decode(p.baseAddress!, maxPayload: 99) == .failure(.tooLarge(100)))
        }
        var bad = bytes
        bad[0] ^= 0xff
        bad.withUnsafeBytes { #expect(FrameHeader.decode($0.baseAddress!, maxPayload: 1000) == .failure(.badMagic)) }
        var v2 = bytes
        v2[4] = 2
        v2.withUnsafeBytes { #expect(FrameHeader.decode($0.baseAddress!, maxPayload: 1000) == .failure(.unsupportedVersion(2))) }
    }

    @Test func messagesRoundTrip() {
        let stat = StatRequest(object: object, revalidate: true)
        #expect(StatRequest(decoding: stat.encoded) == stat)
        let reply = StatReply(version: ObjectVersion(size: 123, etag: "\"abc\""), blockSize: 4 << 20)
        #expect(StatReply(decoding: reply.encoded) == reply)
        let stale = StatReply(version: ObjectVersion(size: 123, etag: "\"abc\""), blockSize: 4 << 20, stale: true)
        #expect(StatReply(decoding: stale.encoded) == stale && StatReply(decoding: stale.encoded) != reply)
        let read = ReadRequest(block: BlockKey(object: object, etag: "\"e\"", objectSize: 10 << 20, blockSize: 1 << 20, index: 9),
                               offset: 5, length: 100)
        #expect(ReadRequest(decoding: read.encoded) == read)
        let hello = HelloMessage(clientName: "t")
        #expect(HelloMessage(decoding: hello.encoded) == hello)
    }

    @Test func truncatedOrPaddedMessagesAreRejected() {
        let read = ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: 1, blockSize: 1 << 20, index: 0), offset: 0, length: 1)
        let bytes = read.encoded
        for n in 0..<bytes.count { #expect(ReadRequest(decoding: Array(bytes.prefix(n))) == nil) }
        #expect(ReadRequest(decoding: bytes + [0]) == nil)
        #expect(StatRequest(decoding: []) == nil)
        #expect(StatRequest(decoding: [0, 0, 0, 0, 0, 0]) == nil)  // empty names
    }

    @Test func readValidationNamesTheProblem() throws {
        func req(_ size: UInt64, _ index: UInt64, _ off: UInt32, _ len: UInt32, bs: UInt32 = 1 << 20, etag: String = "e") -> ReadRequest {
            ReadRequest(block: BlockKey(object: object, etag: etag, objectSize: size, blockSize: bs, index: index), offset: off, length: len)
        }
        try req(3 << 20, 2, 0, 1 << 20).validate()
        #expect(throws: ShoalError.self) { try req(3 << 20, 2, 0, 1 << 20, etag: "").validate() }  // no version
        #expect(throws: ShoalError.self) { try req(3 << 20, 3, 0, 1).validate() }  // past the end
        #expect(throws: ShoalError.self) { try req((2 << 20) + 10, 2, 5, 6).validate() }  // beyond the short last block
        #expect(throws: ShoalError.self) { try req(1 << 20, 0, 0, 0).validate() }  // empty
        #expect(throws: ShoalError.self) { try req(1 << 20, 0, 0, 1, bs: 1000).validate() }  // odd block size
    }
}

@Suite struct ServerConnectionStateTests {
    let secret = Array("s3cret".utf8)
    let nonce = [UInt8](repeating: 7, count: 32)

    func hello() -> (FrameHeader, [UInt8]) {
        let p = HelloMessage(clientName: "t").encoded
        return (FrameHeader(type: .hello, requestID: 1, payloadLength: UInt32(p.count)), p)
    }

    func authenticated() -> ServerConnectionState {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        let (h, p) = hello()
        _ = s.received(h, payload: p, nonce: nonce)
        let mac = ChallengeAuth.response(secret: secret, nonce: nonce)
        _ = s.received(FrameHeader(type: .auth, requestID: 2, payloadLength: 32), payload: mac, nonce: [])
        return s
    }

    @Test func handshakeThenRequests() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        let (h, p) = hello()
        guard case .send(let ch, let body) = s.received(h, payload: p, nonce: nonce) else { Issue.record("no challenge"); return }
        #expect(ch.type == FrameType.challenge.rawValue && Array(body.dropFirst(2)) == nonce)
        let mac = ChallengeAuth.response(secret: secret, nonce: nonce)
        guard case .send(let ok, _) = s.received(FrameHeader(type: .auth, requestID: 2, payloadLength: 32), payload: mac, nonce: []) else {
            Issue.record("no AUTH_OK"); return
        }
        #expect(ok.type == FrameType.authOK.rawValue)
        let stat = StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")).encoded
        #expect(s.received(FrameHeader(type: .stat, requestID: 3, payloadLength: UInt32(stat.count)), payload: stat, nonce: [])
                == .serve(requestID: 3, .stat(StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")))))
    }

    @Test func wrongSecretIsRefusedAndCloses() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        let (h, p) = hello()
        _ = s.received(h, payload: p, nonce: nonce)
        let mac = ChallengeAuth.response(secret: Array("wrong".utf8), nonce: nonce)
        guard case .fail(let e, _) = s.received(FrameHeader(type: .auth, requestID: 2, payloadLength: 32), payload: mac, nonce: []) else {
            Issue.record("accepted a wrong secret"); return
        }
        #expect(e.status == StatusCode.unauthenticated.rawValue)
        #expect(s.state == .closed)
    }

    @Test func requestBeforeAuthIsRefused() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        let stat = StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")).encoded
        guard case .fail(let e, _) = s.received(FrameHeader(type: .stat, requestID: 1, payloadLength: UInt32(stat.count)), payload: stat, nonce: nonce) else {
            Issue.record("served an unauthenticated request"); return
        }
        #expect(e.status == StatusCode.unauthenticated.rawValue)
    }

    @Test func malformedAndUnknownFramesClose() {
        var s = authenticated()
        guard case .fail(let e, _) = s.received(FrameHeader(type: .stat, requestID: 5, payloadLength: 3), payload: [1, 2, 3], nonce: []) else {
            Issue.record("accepted garbage"); return
        }
        #expect(e.status == StatusCode.badRequest.rawValue && s.state == .closed)
        var t = authenticated()
        var h = FrameHeader(type: .stat, requestID: 6, payloadLength: 0)
        h.type = 99
        guard case .fail = t.received(h, payload: [], nonce: []) else { Issue.record("accepted type 99"); return }
        var u = authenticated()
        guard case .fail(let big, _) = u.received(headerError: .tooLarge(1 << 30)) else { Issue.record("accepted a huge frame"); return }
        #expect(big.status == StatusCode.tooLarge.rawValue)
    }
}

@Suite struct HostileInputTests {
    /// Random bytes and random field values never trap the decoders or the validation a worker runs.
    @Test func randomPayloadsNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            let n = Int.random(in: 0..<200, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if let r = ReadRequest(decoding: bytes) { _ = try? r.validate() }
            _ = StatRequest(decoding: bytes)
            _ = HelloMessage(decoding: bytes)
            _ = StatReply(decoding: bytes)
            _ = BlockKey(encoded: bytes)
        }
    }

    @Test func extremeBlockIndexesAreRejectedNotTrapped() {
        let object = ObjectRef(store: "d", bucket: "b", key: "k")
        for index in [UInt64.max, UInt64(1) << 63, UInt64(1) << 44] {
            let r = ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: UInt64.max, blockSize: 4 << 20, index: index),
                                offset: 0, length: 1)
            if index > UInt64.max / (4 << 20) { #expect(throws: ShoalError.self) { try r.validate() } }
        }
        #expect(BlockLayout(blockSize: 0).blockCount(objectSize: 10) == 0)
        #expect(BlockLayout(blockSize: 0).pieces(offset: 0, length: 10).isEmpty)
        #expect(BlockLayout(blockSize: 10).pieces(offset: UInt64.max, length: 10).isEmpty)
    }
}
