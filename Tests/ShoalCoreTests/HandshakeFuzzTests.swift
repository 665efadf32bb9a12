#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ShoalCore

/// Both sides of the handshake, then requests, driven with frames that a relay or a fuzzer
/// mutates (flipped bits, truncation, padding, other types, lengths that lie). Whatever arrives:
/// nothing traps, a refusal always closes, a side becomes ready only on the genuine bytes of the
/// other, and no request is served before the client has proved it holds the secret.
/// `SHOAL_FUZZ_ITERATIONS` and `SHOAL_FUZZ_SEED` make a longer or another run (Tools/fuzz.sh).
@Suite struct HandshakeFuzzTests {
    static func environment(_ name: String) -> UInt64? { getenv(name).flatMap { UInt64(String(cString: $0)) } }

    let secret = Array("fuzz-secret".utf8)

    /// A frame as bytes on the wire, maybe mutated; true if it was.
    func wire(_ header: FrameHeader, _ payload: [UInt8], _ rng: inout SplitMix, mutate: Bool) -> ([UInt8], Bool) {
        var bytes = header.bytes + payload
        guard mutate else { return (bytes, false) }
        switch Int.random(in: 0..<6, using: &rng) {
        case 0, 1:  // flip bits anywhere
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            }
        case 2:  // truncate
            bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
        case 3:  // pad
            bytes += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 4:  // another type
            bytes[5] = UInt8.random(in: 0...20, using: &rng)
        default:  // a payload length that lies
            let n = UInt32.random(in: 0...(WireLimits.maxRequestPayload + 100), using: &rng)
            withUnsafeBytes(of: n.littleEndian) { for i in 0..<4 { bytes[12 + i] = $0[i] } }
        }
        return (bytes, bytes != header.bytes + payload)
    }

    /// Splits wire bytes as a receiver would: the header, then exactly the payload it announces
    /// (short if the bytes end first: the peer then waits and times out, so nil).
    func frame(_ bytes: [UInt8], maxPayload: UInt32) -> Result<(FrameHeader, [UInt8]), FrameHeader.DecodeError>? {
        guard bytes.count >= FrameHeader.size else { return nil }
        let decoded = bytes.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxPayload: maxPayload) }
        switch decoded {
        case .failure(let e): return .failure(e)
        case .success(let h):
            let end = FrameHeader.size + Int(h.payloadLength)
            guard bytes.count >= end else { return nil }
            return .success((h, Array(bytes[FrameHeader.size..<end])))
        }
    }

    @Test func mutatedHandshakesAndRequestsNeverGetPastTheProofs() {
        let iterations = Int(HandshakeFuzzTests.environment("SHOAL_FUZZ_ITERATIONS") ?? 3_000)
        let seed = HandshakeFuzzTests.environment("SHOAL_FUZZ_SEED") ?? 0x5EED_5EED
        var rng = SplitMix(seed: seed)
        var readies = 0
        for iteration in 0..<iterations {
            var client = ClientHandshake(secret: secret, nonce: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) },
                                         clientName: "fuzz", worker: "w")
            var server = ServerConnectionState(secret: secret, blockSize: 1 << 20)
            let mutationRate = [0.0, 0.1, 0.3, 1.0][iteration % 4]
            func mutate() -> Bool { Double.random(in: 0..<1, using: &rng) < mutationRate }

            // Client → worker, then worker → client, until one side stops or both are ready.
            guard case .send(let h1, let hello) = client.start() else { Issue.record("no HELLO"); return }
            var toServer = wire(h1, hello, &rng, mutate: mutate())
            var genuineToServer = hello
            var step = 0
            while step < 4 {
                step += 1
                // The worker receives.
                guard let received = frame(toServer.0, maxPayload: server.maxPayload) else { break }
                let action: ServerAction
                switch received {
                case .failure(let e): action = server.received(headerError: e)
                case .success(let (h, p)):
                    let before = server.state
                    action = server.received(h, payload: p, nonce: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
                    if server.state == .ready, before != .ready {
                        #expect(p == genuineToServer, "iteration \(iteration): the worker accepted an AUTH that was not the client's")
                    }
                }
                guard case .send(let rh, let rp) = action else {
                    #expect(server.state == .closed, "iteration \(iteration): a refusal left the connection open")
                    if case .serve = action { Issue.record("iteration \(iteration): a request was served during the handshake") }
                    break
                }
                // The client receives.
                let (reply, _) = wire(rh, rp, &rng, mutate: mutate())
                guard let back = frame(reply, maxPayload: 64 * 1024), case .success(let (ch, cp)) = back else { break }
                let clientBefore = client.state
                switch client.received(ch, payload: cp) {
                case .send(let h, let p):
                    #expect(clientBefore == .awaitingChallenge && cp == rp,
                            "iteration \(iteration): the client proved itself to a CHALLENGE that was not the worker's")
                    genuineToServer = p
                    toServer = wire(h, p, &rng, mutate: mutate())
                case .ready:
                    readies += 1
                    #expect(server.state == .ready && client.sessionKeys == server.sessionKeys && client.sessionKeys != nil,
                            "iteration \(iteration): the two sides ended the handshake with different keys")
                    step = 4
                case .fail:
                    #expect(client.state == .failed && client.sessionKeys == nil)
                    step = 4
                }
            }

            // Requests, mutated or not: served only once ready; anything malformed closes.
            for _ in 0..<3 {
                let object = ObjectRef(store: "default", bucket: "b", key: "k\(UInt8.random(in: 0...9, using: &rng))")
                let isRead = Bool.random(using: &rng)
                let body = isRead
                    ? ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: 1 << 22, blockSize: 1 << 20, index: 1),
                                  offset: 0, length: 4096).encoded
                    : StatRequest(object: object).encoded
                let type: FrameType = isRead ? .read : .stat
                let wasReady = server.state == .ready
                let (bytes, _) = wire(FrameHeader(type: type, requestID: 7, payloadLength: UInt32(body.count)), body, &rng, mutate: mutate())
                guard let received = frame(bytes, maxPayload: server.maxPayload) else { continue }
                let action: ServerAction
                switch received {
                case .failure(let e): action = server.received(headerError: e)
                case .success(let (h, p)): action = server.received(h, payload: p, nonce: [])
                }
                switch action {
                case .serve: #expect(wasReady, "iteration \(iteration): a request was served without a finished handshake")
                case .fail: #expect(server.state == .closed)
                case .send: Issue.record("iteration \(iteration): the worker answered a request frame with a handshake frame")
                }
            }
        }
        // Unmutated runs (a quarter of them) must all finish the handshake.
        #expect(readies >= iterations / 4, "only \(readies) of \(iterations) handshakes finished (seed \(seed))")
    }
}
