#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ShoalCore

/// The worker's connection state machine driven by a client whose frames a relay or a fuzzer
/// mutates (flipped bits, truncation, padding, other types, lengths that lie) and delivers in
/// random pieces. Whatever arrives: nothing traps, nothing is served before the client proved it
/// holds the secret, nothing after a close, never more requests at once than the limit, and the
/// unmutated runs all finish the handshake and get every request served.
/// `SHOAL_FUZZ_ITERATIONS` and `SHOAL_FUZZ_SEED` make a longer or another run (Tools/fuzz.sh).
@Suite struct ConnectionFuzzTests {
    static func environment(_ name: String) -> UInt64? { getenv(name).flatMap { UInt64(String(cString: $0)) } }

    let secret = Array("fuzz-secret-fuzz-secret".utf8)

    func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var bytes = bytes
        switch Int.random(in: 0..<6, using: &rng) {
        case 0, 1:
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            }
        case 2: bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
        case 3: bytes += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 4: bytes[5] = UInt8.random(in: 0...20, using: &rng)
        default:
            let n = UInt32.random(in: 0...(WireLimits.maxRequestPayload + 100), using: &rng)
            withUnsafeBytes(of: n.littleEndian) { for i in 0..<4 { bytes[12 + i] = $0[i] } }
        }
        return bytes
    }

    @Test func mutatedStreamsNeverGetPastTheProofs() {
        let iterations = Int(ConnectionFuzzTests.environment("SHOAL_FUZZ_ITERATIONS") ?? 2_000)
        let seed = ConnectionFuzzTests.environment("SHOAL_FUZZ_SEED") ?? 0x5EED_5EED
        var rng = SplitMix(seed: seed)
        var cleanRunsServed = 0
        var cleanRuns = 0
        for iteration in 0..<iterations {
            let limit = UInt16.random(in: 1...4, using: &rng)
            var config = ServerConnection.Config(secret: secret, blockSize: 1 << 20) { TestSealer(keys: $0, worker: true) }
            config.maxInFlight = limit
            var server = ServerConnection(config)
            var client = ClientHandshake(secret: secret, nonce: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) },
                                         clientName: "fuzz", worker: "w")
            let rate = [0.0, 0.05, 0.3, 1.0][iteration % 4]
            var mutated = false
            var established = false
            var closed = false
            var served = 0
            var actions: [ServerAction] = []

            func deliver(_ frame: [UInt8], _ rng: inout SplitMix) -> [ServerAction] {
                var bytes = frame
                if Double.random(in: 0..<1, using: &rng) < rate, !bytes.isEmpty {
                    let m = mutate(bytes, &rng)
                    if m != bytes { mutated = true }
                    bytes = m
                }
                var out: [ServerAction] = []
                var at = 0
                while at < bytes.count {
                    let n = min(bytes.count - at, Int.random(in: 1...64, using: &rng))
                    var got: [ServerAction] = []
                    bytes[at..<at + n].withUnsafeBytes { p in server.receive(p, nonce: { [UInt8](repeating: 3, count: 32) }, into: &got) }
                    for a in got {
                        #expect(!closed, "iteration \(iteration): an action after the connection closed")
                        switch a {
                        case .established: established = true
                        case .serve: #expect(established, "iteration \(iteration): served before the client proved itself"); served += 1
                        case .close: closed = true
                        case .send: break
                        }
                    }
                    #expect(server.requestsInFlight <= Int(limit))
                    out += got
                    at += n
                }
                return out
            }

            guard case .send(let h, let p) = client.start() else { Issue.record("no HELLO"); return }
            actions = deliver(h.bytes + p, &rng)
            var sealer: TestSealer?
            if case .send(let challenge)? = actions.first, challenge.count >= FrameHeader.size,
               let ch = challenge.withUnsafeBytes({ try? FrameHeader.decode($0.baseAddress!, maxPayload: 1 << 16).get() }),
               case .send(let ah, let ap) = client.received(ch, payload: Array(challenge.dropFirst(FrameHeader.size))) {
                _ = deliver(ah.bytes + ap, &rng)
                if established, let keys = client.sessionKeys {
                    #expect(keys == server.sessionKeys, "iteration \(iteration): the sides ended the handshake with different keys")
                    sealer = TestSealer(keys: keys, worker: false)
                }
            }
            // Requests, more than the limit, some mutated; replies finish in reverse order.
            var ids: [UInt32] = []
            for id in UInt32(1)...6 where !closed {
                let object = ObjectRef(store: "default", bucket: "b", key: "k\(id)")
                let body = id % 2 == 0
                    ? ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: 1 << 22, blockSize: 1 << 20, index: 1), offset: 0, length: 4096).encoded
                    : StatRequest(object: object).encoded
                let frame = sealer?.frame(id % 2 == 0 ? .read : .stat, id: id, body)
                    ?? FrameHeader(type: .read, requestID: id, payloadLength: UInt32(body.count)).bytes + body
                for a in deliver(frame, &rng) { if case .serve(let rid, _) = a { ids.append(rid) } }
            }
            while let id = ids.popLast(), !closed {
                var got: [ServerAction] = []
                server.finished(id, into: &got)
                for a in got {
                    if case .serve(let rid, _) = a { ids.insert(rid, at: 0); served += 1 }
                    if case .close = a { closed = true }
                }
            }
            if rate == 0 {
                cleanRuns += 1
                if established && served == 6 { cleanRunsServed += 1 }
            }
            _ = mutated
        }
        #expect(cleanRunsServed == cleanRuns, "only \(cleanRunsServed) of \(cleanRuns) clean runs were served in full (seed \(seed))")
    }

    @Test func randomBytesNeverTrapAndNeverServe() {
        var rng = SplitMix(seed: ConnectionFuzzTests.environment("SHOAL_FUZZ_SEED") ?? 77)
        for _ in 0..<500 {
            var server = ServerConnection(ServerConnection.Config(secret: secret, blockSize: 1 << 20) { TestSealer(keys: $0, worker: true) })
            var actions: [ServerAction] = []
            for _ in 0..<4 {
                var bytes = (0..<Int.random(in: 0..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if Bool.random(using: &rng), bytes.count >= 4 { withUnsafeBytes(of: FrameHeader.magic.littleEndian) { for i in 0..<4 { bytes[i] = $0[i] } } }
                bytes.withUnsafeBytes { server.receive($0, nonce: { [UInt8](repeating: 1, count: 32) }, into: &actions) }
            }
            #expect(!actions.contains { if case .serve = $0 { return true } else { return false } })
        }
    }
}
