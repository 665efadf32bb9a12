import Testing
@testable import ShoalCore

/// Frame tags for tests, made with ShoalCore's HMAC (the worker uses AES-GCM from the system
/// layer): per direction, bound to a sequence number, so reordering and replay fail as they do.
final class TestSealer: FrameSealer {
    let sendKey: [UInt8]
    let receiveKey: [UInt8]
    var sent: UInt64 = 0
    var received: UInt64 = 0

    init(keys: SessionKeys, worker: Bool) {
        sendKey = worker ? keys.workerToClient : keys.clientToWorker
        receiveKey = worker ? keys.clientToWorker : keys.workerToClient
    }

    static func tag(_ key: [UInt8], _ sequence: UInt64, _ pieces: [UnsafeRawBufferPointer]) -> [UInt8] {
        var message: [UInt8] = []
        message.appendLE(sequence)
        for p in pieces { message += p }
        return Array(hmacSHA256(key: key, message: message).prefix(FrameTag.size))
    }

    func sealFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer, tag: UnsafeMutableRawPointer) -> Bool {
        let t = TestSealer.tag(sendKey, sent, [a, b, c])
        sent += 1
        t.withUnsafeBytes { tag.copyMemory(from: $0.baseAddress!, byteCount: FrameTag.size) }
        return true
    }

    /// A streamed frame: its pieces are gathered, its sequence number taken when it begins.
    private var stream: (sequence: UInt64, bytes: [UInt8])?

    func beginStream(_ head: UnsafeRawBufferPointer) -> Bool {
        guard stream == nil else { return false }
        stream = (sent, Array(head))
        sent += 1
        return true
    }

    func continueStream(_ piece: UnsafeRawBufferPointer) -> Bool {
        guard stream != nil else { return false }
        stream!.bytes += piece
        return true
    }

    func finishStream(_ tail: UnsafeRawBufferPointer, tag: UnsafeMutableRawPointer) -> Bool {
        guard let s = stream else { return false }
        stream = nil
        let t = (s.bytes + tail).withUnsafeBytes { TestSealer.tag(sendKey, s.sequence, [$0]) }
        t.withUnsafeBytes { tag.copyMemory(from: $0.baseAddress!, byteCount: FrameTag.size) }
        return true
    }

    func openFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool {
        defer { received += 1 }
        return TestSealer.tag(receiveKey, received, [a, b]) == Array(tag)
    }

    /// A whole tagged frame as the client sends it.
    func frame(_ type: FrameType, id: UInt32, _ body: [UInt8]) -> [UInt8] {
        var bytes = FrameHeader(type: type, requestID: id, payloadLength: UInt32(body.count + FrameTag.size)).bytes + body
        let t = bytes.withUnsafeBytes { TestSealer.tag(sendKey, sent, [$0]) }
        sent += 1
        bytes += t
        return bytes
    }
}

/// The worker's connection state machine, driven with bytes as a socket would deliver them.
@Suite struct ServerConnectionTests {
    let secret = Array("s3cret-s3cret-s3cret".utf8)
    let workerNonce = [UInt8](repeating: 7, count: 32)
    let clientNonce = [UInt8](repeating: 9, count: 32)

    func config(maxInFlight: UInt16 = 32, untagged: Bool = false) -> ServerConnection.Config {
        var c = ServerConnection.Config(secret: secret, blockSize: 4096) { TestSealer(keys: $0, worker: true) }
        c.maxInFlight = maxInFlight
        c.allowsUntaggedFrames = untagged
        return c
    }

    func feed(_ s: inout ServerConnection, _ bytes: [UInt8], nonce: [UInt8]? = nil) -> [ServerAction] {
        var actions: [ServerAction] = []
        let n = nonce ?? workerNonce
        bytes.withUnsafeBytes { s.receive($0, nonce: { n }, into: &actions) }
        return actions
    }

    /// Splits a whole frame the worker sent into header and payload.
    func split(_ bytes: [UInt8]) -> (FrameHeader, [UInt8]) {
        let h = bytes.withUnsafeBytes { try? FrameHeader.decode($0.baseAddress!, maxPayload: 1 << 20).get() }!
        return (h, Array(bytes.dropFirst(FrameHeader.size)))
    }

    /// Drives a machine to ready; returns it and the client's sealer.
    func ready(maxInFlight: UInt16 = 32) -> (ServerConnection, TestSealer)? {
        var s = ServerConnection(config(maxInFlight: maxInFlight))
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start(), case .send(let challenge)? = feed(&s, h.bytes + p).first else { return nil }
        let (ch, cp) = split(challenge)
        guard case .send(let ah, let ap) = c.received(ch, payload: cp) else { return nil }
        let actions = feed(&s, ah.bytes + ap)
        guard actions.count == 2, actions[0] == .established, case .send(let ok) = actions[1], let keys = c.sessionKeys else { return nil }
        let sealer = TestSealer(keys: keys, worker: false)
        // AUTH_OK is the worker's first tagged frame.
        let (oh, op) = split(ok)
        let tagged = op.withUnsafeBytes { p in
            ok.withUnsafeBytes { o in
                sealer.openFrame(UnsafeRawBufferPointer(rebasing: o.prefix(FrameHeader.size)), UnsafeRawBufferPointer(rebasing: p.dropLast(FrameTag.size)),
                                 tag: UnsafeRawBufferPointer(rebasing: p.suffix(FrameTag.size)))
            }
        }
        guard tagged, oh.type == FrameType.authOK.rawValue,
              AuthOKMessage(decoding: Array(op.dropLast(FrameTag.size))) == AuthOKMessage(blockSize: 4096, maxInFlight: maxInFlight)
        else { return nil }
        return (s, sealer)
    }

    func read(_ i: UInt64) -> ReadRequest {
        ReadRequest(block: BlockKey(object: ObjectRef(store: "d", bucket: "b", key: "k"), etag: "e", objectSize: 1 << 24, blockSize: 1 << 20, index: i),
                    offset: 0, length: 4096)
    }

    @Test func handshakeThenRequestsServedWithTheirIDs() throws {
        var (s, sealer) = try #require(ready())
        #expect(s.isReady && s.sessionKeys == MutualAuth.sessionKeys(secret: secret, clientNonce: clientNonce, workerNonce: workerNonce))
        let stat = StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k"))
        // Two frames in one receive: both served, in the order sent.
        let bytes = sealer.frame(.stat, id: 3, stat.encoded) + sealer.frame(.read, id: 4, read(1).encoded)
        let actions = feed(&s, bytes)
        #expect(actions == [.serve(requestID: 3, .stat(stat)), .serve(requestID: 4, .read(read(1)))])
        #expect(s.requestsInFlight == 2)
    }

    /// MEMBERS has no payload: served as a request; one with a payload is malformed (ERROR, close).
    @Test func membersIsARequestWithoutPayload() throws {
        var (s, sealer) = try #require(ready())
        #expect(feed(&s, sealer.frame(.members, id: 5, [])) == [.serve(requestID: 5, .members)])
        let actions = feed(&s, sealer.frame(.members, id: 6, [1]))
        guard case .close(_, let status, let reason)? = actions.last else { Issue.record("not closed: \(actions)"); return }
        #expect(status == .badRequest && reason.contains("MEMBERS"))
    }

    /// LIST is served as a request; a malformed one closes the connection, naming it.
    @Test func listIsARequestAndAMalformedOneCloses() throws {
        var (s, sealer) = try #require(ready())
        let list = ListRequest(store: "default", bucket: "bkt", prefix: "p/")
        #expect(feed(&s, sealer.frame(.list, id: 5, list.encoded)) == [.serve(requestID: 5, .list(list))])
        let actions = feed(&s, sealer.frame(.list, id: 6, Array(list.encoded.dropLast())))
        guard case .close(_, let status, let reason)? = actions.last else { Issue.record("not closed: \(actions)"); return }
        #expect(status == .badRequest && reason.contains("LIST"))
    }

    @Test func aFrameSplitAcrossReceivesIsServedOnceWhole() throws {
        var (s, sealer) = try #require(ready())
        let frame = sealer.frame(.read, id: 9, read(2).encoded)
        var served: [ServerAction] = []
        for byte in frame { served += feed(&s, [byte]) }
        #expect(served == [.serve(requestID: 9, .read(read(2)))])
        // The decoded request hashes the key bytes it arrived with: the same id a client computes.
        if case .serve(_, .read(let r)) = served.first { #expect(r.id == read(2).block.id) }
    }

    @Test func beyondTheInFlightLimitFramesWaitUntilARepliesGoesOut() throws {
        var (s, sealer) = try #require(ready(maxInFlight: 2))
        var bytes: [UInt8] = []
        for id in UInt32(1)...5 { bytes += sealer.frame(.read, id: id, read(UInt64(id)).encoded) }
        var actions = feed(&s, bytes)
        #expect(actions.count == 2 && !s.wantsInput && s.heldBytes > 0, "only two served; the rest held")
        // Replies leave in any order: finishing 2 lets 3 in, finishing 1 lets 4 in.
        actions = []
        s.finished(2, into: &actions)
        #expect(actions == [.serve(requestID: 3, .read(read(3)))])
        actions = []
        s.finished(1, into: &actions)
        #expect(actions == [.serve(requestID: 4, .read(read(4)))])
        actions = []
        s.finished(3, into: &actions)
        s.finished(4, into: &actions)
        #expect(actions == [.serve(requestID: 5, .read(read(5)))] && s.heldBytes == 0 && s.wantsInput)
    }

    @Test func aRequestIDAlreadyInFlightClosesTheConnection() throws {
        var (s, sealer) = try #require(ready())
        let actions = feed(&s, sealer.frame(.read, id: 7, read(1).encoded) + sealer.frame(.read, id: 7, read(2).encoded))
        #expect(actions.count == 2)
        guard case .close(_, let status, let reason) = actions.last else { Issue.record("a duplicate id was served"); return }
        #expect(status == .badRequest && reason.contains("already in flight") && s.isClosed)
    }

    @Test func aTamperedFrameClosesWithATaggedError() throws {
        var (s, sealer) = try #require(ready())
        var frame = sealer.frame(.read, id: 1, read(1).encoded)
        frame[30] ^= 1
        guard case .close(let bytes, let status, _)? = feed(&s, frame).first else { Issue.record("a tampered frame was served"); return }
        #expect(status == .unauthenticated && s.isClosed)
        // The ERROR is tagged: a relay cannot forge one.
        let (h, _) = split(bytes)
        #expect(Int(h.payloadLength) == bytes.count - FrameHeader.size && bytes.count > FrameHeader.size + FrameTag.size)
        #expect(feed(&s, sealer.frame(.read, id: 2, read(2).encoded)).isEmpty, "nothing after a close")
    }

    @Test func aReplayedFrameFailsItsTag() throws {
        var (s, sealer) = try #require(ready())
        let frame = sealer.frame(.read, id: 1, read(1).encoded)
        #expect(feed(&s, frame).count == 1)
        guard case .close(_, let status, _)? = feed(&s, frame).first else { Issue.record("a replayed frame was served"); return }
        #expect(status == .unauthenticated)
    }

    @Test func readvIsAnsweredAndTheConnectionGoesOn() throws {
        var (s, sealer) = try #require(ready())
        let actions = feed(&s, sealer.frame(.readv, id: 5, [1, 2, 3]) + sealer.frame(.read, id: 6, read(1).encoded))
        guard actions.count == 2, case .send(let reply) = actions[0] else { Issue.record("READV not answered: \(actions)"); return }
        let (h, _) = split(reply)
        #expect(h.requestID == 5 && h.status == StatusCode.badRequest.rawValue && s.isReady)
        #expect(actions[1] == .serve(requestID: 6, .read(read(1))))
    }

    @Test func wrongSecretIsRefusedAndCloses() {
        var s = ServerConnection(config())
        var c = ClientHandshake(secret: Array("another-secret-entirely".utf8), nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start(), case .send(let challenge)? = feed(&s, h.bytes + p).first,
              let parsed = ChallengeMessage(decoding: split(challenge).1) else { Issue.record("no challenge"); return }
        // That client refuses the worker's proof itself, so forge its AUTH.
        let mac = MutualAuth.clientProof(secret: Array("another-secret-entirely".utf8), hello: p, challenge: parsed.signedPart)
        guard case .close(_, let status, _)? = feed(&s, FrameHeader(type: .auth, requestID: 2, payloadLength: 32).bytes + mac).first else {
            Issue.record("accepted a wrong secret"); return
        }
        #expect(status == .unauthenticated && s.isClosed && s.sessionKeys == nil)
    }

    @Test func aWorkerWithoutTheSecretIsRefusedBeforeTheClientProvesAnything() {
        var impostor = ServerConnection(ServerConnection.Config(secret: Array("guessed-guessed-guessed".utf8), blockSize: 4096) { _ in nil })
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "10.0.0.9:7070")
        guard case .send(let h, let p) = c.start(), case .send(let challenge)? = feed(&impostor, h.bytes + p).first else {
            Issue.record("no challenge"); return
        }
        let (ch, cp) = split(challenge)
        guard case .fail(let e) = c.received(ch, payload: cp) else { Issue.record("client proved itself to an impostor"); return }
        #expect(e.code == .unauthenticated && e.message.contains("worker 10.0.0.9:7070 does not hold the cluster secret"))
    }

    @Test func framesWithoutTagsOnlyWhenTheClientAsksAndTheWorkerAllows() {
        func handshake(asks: Bool, allows: Bool) -> [ServerAction] {
            var s = ServerConnection(config(untagged: allows))
            var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w", untaggedFrames: asks)
            guard case .send(let h, let p) = c.start(), case .send(let challenge)? = feed(&s, h.bytes + p).first else { return feed(&s, []) }
            let (ch, cp) = split(challenge)
            guard case .send(let ah, let ap) = c.received(ch, payload: cp) else { return [] }
            return feed(&s, ah.bytes + ap)
        }
        func okLength(_ a: [ServerAction]) -> Int? {
            guard a.count == 2, case .send(let ok) = a[1] else { return nil }
            return ok.count
        }
        let plain = FrameHeader.size + 6
        #expect(okLength(handshake(asks: false, allows: true)) == plain + FrameTag.size, "a worker with the switch still tags unless asked")
        #expect(okLength(handshake(asks: false, allows: false)) == plain + FrameTag.size)
        #expect(okLength(handshake(asks: true, allows: true)) == plain)
        var s = ServerConnection(config(untagged: false))
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w", untaggedFrames: true)
        guard case .send(let h, let p) = c.start(), case .close(_, _, let reason)? = feed(&s, h.bytes + p).first else {
            Issue.record("a worker without the switch served untagged frames"); return
        }
        #expect(reason.contains("allowUntaggedFrames"))
    }

    @Test func anOlderClientIsToldBothVersionsInItsOwnVersion() {
        for old in [UInt8(1), 2] {
            var s = ServerConnection(config())
            var h = FrameHeader(type: .hello, requestID: 0, payloadLength: 0)
            h.version = old
            guard case .close(let bytes, let status, let reason)? = feed(&s, h.bytes).first else { Issue.record("accepted v\(old)"); return }
            #expect(status == .unsupportedVersion && bytes[4] == old, "the refusal is framed in the client's version so it can read it")
            #expect(reason.contains("version \(old)") && reason.contains("version \(FrameHeader.version)"))
        }
    }

    @Test func aWorkerWithoutAFreshNonceRefusesTheHello() {
        var s = ServerConnection(config())
        var c = ClientHandshake(secret: secret, nonce: clientNonce, clientName: "t", worker: "w")
        guard case .send(let h, let p) = c.start() else { Issue.record("no HELLO"); return }
        var actions: [ServerAction] = []
        (h.bytes + p).withUnsafeBytes { s.receive($0, nonce: { nil }, into: &actions) }
        guard case .close(_, let status, _)? = actions.first else { Issue.record("challenged without a nonce"); return }
        #expect(status == .internal)
    }

    @Test func requestBeforeAuthIsRefused() {
        var s = ServerConnection(config())
        let stat = StatRequest(object: ObjectRef(store: "d", bucket: "b", key: "k")).encoded
        guard case .close(_, let status, _)? = feed(&s, FrameHeader(type: .stat, requestID: 1, payloadLength: UInt32(stat.count)).bytes + stat).first else {
            Issue.record("served an unauthenticated request"); return
        }
        #expect(status == .unauthenticated)
    }

    @Test func malformedUnknownAndOversizedFramesClose() throws {
        var (s, sealer) = try #require(ready())
        guard case .close(_, let status, _)? = feed(&s, sealer.frame(.stat, id: 5, [1, 2, 3])).first else { Issue.record("accepted garbage"); return }
        #expect(status == .badRequest && s.isClosed)
        var (t, tSealer) = try #require(ready())
        var bytes = tSealer.frame(.stat, id: 6, [])
        bytes[5] = 99
        guard case .close(_, _, let reason)? = feed(&t, bytes).first else { Issue.record("accepted type 99"); return }
        #expect(reason.contains("99") || reason.contains("authentication"))
        var (u, _) = try #require(ready())
        let huge = FrameHeader(type: .read, requestID: 1, payloadLength: 1 << 30).bytes
        guard case .close(_, let bigStatus, _)? = feed(&u, huge).first else { Issue.record("accepted a huge frame"); return }
        #expect(bigStatus == .tooLarge)
    }
}
