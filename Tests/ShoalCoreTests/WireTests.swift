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
        var v1 = bytes
        v1[4] = 1
        v1.withUnsafeBytes { #expect(FrameHeader.decode($0.baseAddress!, maxPayload: 1000) == .failure(.unsupportedVersion(1))) }
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
        let hello = HelloMessage(nonce: Array(repeating: 3, count: 32), clientName: "t")
        #expect(HelloMessage(decoding: hello.encoded) == hello)
        let challenge = ChallengeMessage(version: 2, nonce: Array(repeating: 4, count: 32), proof: Array(repeating: 5, count: 32))
        #expect(ChallengeMessage(decoding: challenge.encoded) == challenge)
        #expect(HelloMessage(decoding: HelloMessage(nonce: [1, 2], clientName: "t").encoded) == nil)  // short nonce
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
        // An etag goes into a header of the worker's request to its store: no line breaks.
        for etag in ["\"e\"\r\nX-Injected: 1", "\"e\"\n", "e\u{0}", "e\u{7F}"] {
            #expect(throws: ShoalError.self, "\(Array(etag.utf8))") { try req(1 << 20, 0, 0, 1, etag: etag).validate() }
        }
        try req(1 << 20, 0, 0, 1, etag: "W/\"e-1\"").validate()
        try req(1 << 20, 0, 0, 1, etag: "shoal-lm:Sun, 22 Nov 2026 03:09:00 GMT").validate()
    }
}

@Suite struct ServerConnectionStateTests {
    let secret = Array("s3cret".utf8)
    let workerNonce = [UInt8](repeating: 7, count: 32)
    let clientNonce = [UInt8](repeating: 9, count: 32)
    var nonce: [UInt8] { workerNonce }

    /// A client that drives the server machine to ready.
    func authenticated() -> ServerConnectionState {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start(), case .send(let ch, let cp) = s.received(h, payload: p, nonce: workerNonce),
              case .send(let ah, let ap) = c.received(ch, payload: cp) else { return s }
        _ = s.received(ah, payload: ap, nonce: [])
        return s
    }

    @Test func mutualHandshakeDerivesTheSameKeysOnBothSidesThenServes() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start() else { Issue.record("no HELLO"); return }
        guard case .send(let ch, let cp) = s.received(h, payload: p, nonce: workerNonce) else { Issue.record("no challenge"); return }
        #expect(ch.type == FrameType.challenge.rawValue && ChallengeMessage(decoding: cp)?.nonce == workerNonce)
        #expect(s.sessionKeys == nil, "no keys before the client has proved itself")
        guard case .send(let ah, let ap) = c.received(ch, payload: cp) else { Issue.record("client refused a good worker"); return }
        guard case .send(let ok, let okp) = s.received(ah, payload: ap, nonce: []) else { Issue.record("no AUTH_OK"); return }
        #expect(ok.type == FrameType.authOK.rawValue)
        #expect(c.received(ok, payload: okp) == .ready(blockSize: 4096))
        let keys = s.sessionKeys
        #expect(keys != nil && keys == c.sessionKeys)
        #expect(keys?.clientToWorker != keys?.workerToClient, "one key per direction")
        #expect(keys == MutualAuth.sessionKeys(secret: secret, clientNonce: clientNonce, workerNonce: workerNonce))
        #expect(keys != MutualAuth.sessionKeys(secret: secret, clientNonce: clientNonce, workerNonce: clientNonce), "keys depend on Nw")
        let stat = StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")).encoded
        #expect(s.received(FrameHeader(type: .stat, requestID: 3, payloadLength: UInt32(stat.count)), payload: stat, nonce: [])
                == .serve(requestID: 3, .stat(StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")))))
    }

    @Test func wrongSecretIsRefusedAndCloses() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        // A client with another secret: it refuses the worker's proof itself, so forge its AUTH.
        let hello = HelloMessage(nonce: clientNonce, clientName: "t").encoded
        guard case .send(_, let cp) = s.received(FrameHeader(type: .hello, requestID: 1, payloadLength: UInt32(hello.count)), payload: hello,
                                                 nonce: workerNonce),
              let challenge = ChallengeMessage(decoding: cp) else { Issue.record("no challenge"); return }
        let mac = MutualAuth.clientProof(secret: Array("wrong".utf8), hello: hello, challenge: challenge.signedPart)
        guard case .fail(let e, _) = s.received(FrameHeader(type: .auth, requestID: 2, payloadLength: 32), payload: mac, nonce: []) else {
            Issue.record("accepted a wrong secret"); return
        }
        #expect(e.status == StatusCode.unauthenticated.rawValue)
        #expect(s.state == .closed && s.sessionKeys == nil)
    }

    @Test func aWorkerWithoutTheSecretIsRefusedBeforeTheClientProvesAnything() {
        var impostor = ServerConnectionState(secret: Array("guessed".utf8), blockSize: 4096)
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "10.0.0.9:7070")
        guard case .send(let h, let p) = c.start(), case .send(let ch, let cp) = impostor.received(h, payload: p, nonce: workerNonce) else {
            Issue.record("no challenge"); return
        }
        guard case .fail(let e) = c.received(ch, payload: cp) else { Issue.record("client proved itself to an impostor"); return }
        #expect(e.code == .unauthenticated)
        #expect(e.message.contains("worker 10.0.0.9:7070 does not hold the cluster secret"))
        #expect(c.sessionKeys == nil && c.state == .failed)
    }

    /// A relay between the two that forwards every frame but changes one byte of one of them:
    /// the handshake never completes with both sides ready.
    @Test func aRelayThatAltersAnyHandshakeFrameIsDetected() {
        func run(alter frame: Int, at position: Int) -> (clientReady: Bool, serverReady: Bool) {
            var s = ServerConnectionState(secret: secret, blockSize: 4096)
            var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "trainer-1", worker: "w")
            var n = 0
            func relay(_ h: FrameHeader, _ p: [UInt8]) -> (FrameHeader, [UInt8]) {
                defer { n += 1 }
                guard n == frame else { return (h, p) }
                var p = p
                p[position % p.count] ^= 0x01
                return (h, p)
            }
            guard case .send(let h0, let p0) = c.start() else { return (false, false) }
            let (h1, p1) = relay(h0, p0)
            guard case .send(let h2, let p2) = s.received(h1, payload: p1, nonce: workerNonce) else { return (false, false) }
            let (h3, p3) = relay(h2, p2)
            guard case .send(let h4, let p4) = c.received(h3, payload: p3) else { return (false, false) }
            let (h5, p5) = relay(h4, p4)
            guard case .send = s.received(h5, payload: p5, nonce: []) else { return (false, false) }
            return (c.state == .awaitingAuthOK, s.state == .ready)
        }
        #expect(run(alter: 99, at: 0) == (true, true), "an honest relay changes nothing")
        // HELLO: versions, nonce, flags and name; CHALLENGE: version, nonce, proof; AUTH: the proof.
        for (frame, positions) in [(0, [0, 2, 4, 20, 35, 36, 37, 40]), (1, [0, 2, 20, 34, 50, 65]), (2, [0, 16, 31])] {
            for at in positions {
                let r = run(alter: frame, at: at)
                #expect(!(r.clientReady && r.serverReady), "frame \(frame) altered at byte \(at) went through")
            }
        }
    }

    @Test func framesWithoutTagsOnlyWhenTheClientAsksAndTheWorkerAllows() {
        func handshake(asks: Bool, allows: Bool) -> (ServerConnectionState, ServerAction?) {
            var s = ServerConnectionState(secret: secret, blockSize: 4096, allowsUntaggedFrames: allows)
            var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w", untaggedFrames: asks)
            guard case .send(let h, let p) = c.start() else { return (s, nil) }
            let a = s.received(h, payload: p, nonce: workerNonce)
            return (s, a)
        }
        #expect(handshake(asks: false, allows: true).0.framesTagged, "a worker with the switch still tags unless asked")
        #expect(handshake(asks: false, allows: false).0.framesTagged)
        #expect(!handshake(asks: true, allows: true).0.framesTagged)
        let (refusing, action) = handshake(asks: true, allows: false)
        guard case .fail(_, let body)? = action else { Issue.record("a worker without the switch served untagged frames"); return }
        #expect(String(decoding: body, as: UTF8.self).contains("allowUntaggedFrames") && refusing.framesTagged)
    }

    @Test func aVersion1ClientIsToldBothVersionsInItsOwnVersion() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        guard case .fail(let h, let body) = s.received(headerError: .unsupportedVersion(1)) else { Issue.record("accepted v1"); return }
        #expect(h.version == 1 && h.status == StatusCode.unsupportedVersion.rawValue)
        let message = String(decoding: body, as: UTF8.self)
        #expect(message.contains("version 1") && message.contains("version 2"))
        #expect(h.bytes[4] == 1, "the refusal is framed as version 1 so a v1 client can read it")
    }

    @Test func aWorkerWithoutAFreshNonceRefusesTheHello() {
        var s = ServerConnectionState(secret: secret, blockSize: 4096)
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start() else { Issue.record("no HELLO"); return }
        guard case .fail(let e, _) = s.received(h, payload: p, nonce: []) else { Issue.record("challenged without a nonce"); return }
        #expect(e.status == StatusCode.internal.rawValue)
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
