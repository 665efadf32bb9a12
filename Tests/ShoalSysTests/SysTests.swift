import Glibc
import Testing
import ShoalCore
@testable import ShoalSys
@testable import ShoalIO
import ShoalTestSupport

@Suite struct BufferPoolTests {
    @Test func directWriteThenFixedReadRoundTrips() throws {
        let dir = makeTemporaryDirectory("pool")
        let pool = try BufferPool(bufferSize: 1 << 20, count: 2)
        let file = try FileHandle.open(dir + "/f", [.create, .direct])
        try file.allocate(length: 4 << 20)
        let a = try #require(pool.acquire())
        SampleData.fill(UnsafeMutableRawBufferPointer(start: a.base, count: 1 << 20), seed: 3)
        try a.write(file: file, at: 1 << 20, count: 1 << 20)
        let b = try #require(pool.acquire())
        #expect(try b.read(file: file, at: 1 << 20, count: 1 << 20) == 1 << 20)
        #expect(memcmp(a.base, b.base, 1 << 20) == 0)
        #expect(Int(bitPattern: a.base) % 4096 == 0 && Int(bitPattern: b.base) % 4096 == 0)
        pool.release(a)
        pool.release(b)
        #expect(pool.available == 2)
    }

    @Test func acquireTimesOutWhenAllBuffersAreTaken() throws {
        let pool = try BufferPool(bufferSize: 4096, count: 1)
        let a = try #require(pool.acquire())
        #expect(pool.acquire(timeoutNanos: 50_000_000) == nil)
        pool.release(a)
        #expect(pool.acquire(timeoutNanos: 50_000_000) != nil)
    }
}

@Suite struct SocketTests {
    @Test func gatheredSendArrivesWholeAndDeadlinesFire() throws {
        let (listener, port) = try TCPSocket.listen(Endpoint(host: "127.0.0.1", port: 0))
        let client = try TCPSocket.connect(Endpoint(host: "127.0.0.1", port: port), timeoutMillis: 2000)
        let server = try #require(try listener.accept())
        let head: [UInt8] = [1, 2, 3]
        let body = SampleData.bytes(seed: 9, count: 3 << 20)
        try head.withUnsafeBytes { h in try body.withUnsafeBytes { b in try client.send([h, b]) } }
        let got = try server.receive(count: head.count + body.count, deadline: monotonicNanos() + 5_000_000_000)
        #expect(got == head + body)
        #expect(throws: SysError.self) { try server.receive(count: 1, deadline: monotonicNanos() + 50_000_000) }
        client.close()
        #expect(throws: SysError.self) { try server.receive(count: 1, deadline: monotonicNanos() + 2_000_000_000) }
    }

    @Test func endpointsParse() {
        #expect(Endpoint("127.0.0.1:80") == Endpoint(host: "127.0.0.1", port: 80))
        #expect(Endpoint("[::1]:7070") == Endpoint(host: "::1", port: 7070))
        #expect(Endpoint("nohost") == nil)
        #expect(Endpoint("h:99999") == nil)
    }
}

@Suite struct SelfConnectTests {
    /// A port in the ephemeral range with nothing listening can be picked as the connecting
    /// socket's own port: the connection reaches itself. Forced here by binding to the target.
    @Test func aConnectionThatReachesItselfIsRefusedNamingTheEndpoint() throws {
        let (probe, port) = try TCPSocket.listen(Endpoint(host: "127.0.0.1", port: 0))
        probe.close()
        let target = Endpoint(host: "127.0.0.1", port: port)
        #expect(performing: { try TCPSocket.connect(target, timeoutMillis: 2_000, bindingTo: target) }, throws: {
            guard let e = $0 as? SysError else { return false }
            return e.errno == ECONNREFUSED && e.operation.contains("\(target)") && e.operation.contains("nothing listens there")
        })
    }
}

@Suite struct RandomSourceTests {
    @Test func aFailingRandomSourceThrowsInsteadOfReturningZeroes() throws {
        #expect(try secureRandomBytes(32) != [UInt8](repeating: 0, count: 32))
        FaultInjection.setRandomSource(failingWith: EIO)
        defer { FaultInjection.setRandomSource(failingWith: nil) }
        #expect {
            _ = try secureRandomBytes(32)
        } throws: { error in
            (error as? SysError).map { $0.errno == EIO && $0.operation.contains("random source") } ?? false
        }
    }
}

@Suite struct FrameAuthenticatorTests {
    let keys = MutualAuth.sessionKeys(secret: Array("s".utf8), clientNonce: Array(repeating: 1, count: 32),
                                      workerNonce: Array(repeating: 2, count: 32))

    func frame(_ id: UInt32, _ body: [UInt8]) -> [UInt8] {
        FrameHeader(type: .read, requestID: id, payloadLength: UInt32(body.count + FrameTag.size)).bytes + body
    }

    @Test func aTaggedFrameOpensOnceInOrderAndNowhereElse() throws {
        let client = try FrameAuthenticator(keys: keys, role: .client)
        let worker = try FrameAuthenticator(keys: keys, role: .worker)
        let a = frame(1, Array(repeating: 7, count: 100))
        let b = frame(2, Array(repeating: 8, count: 100))
        let ta = try client.seal(a)
        let tb = try client.seal(b)
        #expect(ta != tb)
        #expect(worker.open(frame: a + ta))
        #expect(!worker.open(frame: a + ta), "a replayed frame fails (its sequence number is spent)")

        let worker2 = try FrameAuthenticator(keys: keys, role: .worker)
        #expect(!worker2.open(frame: b + tb), "frames out of order fail")

        let worker3 = try FrameAuthenticator(keys: keys, role: .worker)
        var altered = a
        altered[FrameHeader.size + 50] ^= 1
        #expect(!worker3.open(frame: altered + ta), "a changed byte fails")

        // A frame of the worker's own, reflected back to it, fails: each direction has its key.
        let worker4 = try FrameAuthenticator(keys: keys, role: .worker)
        let fromWorker = try worker4.seal(a)
        let worker5 = try FrameAuthenticator(keys: keys, role: .worker)
        #expect(!worker5.open(frame: a + fromWorker))
        let client2 = try FrameAuthenticator(keys: keys, role: .client)
        #expect(client2.open(frame: a + fromWorker))
    }

    /// The GHASH of CShoalTLS/gmac.c (VPCLMULQDQ) against OpenSSL's GCM: the same tag for any
    /// pieces, of lengths around its 16-, 256- and 512-byte steps, one frame after another.
    @Test(.enabled(if: FrameAuthenticator.isAccelerated, "this CPU has no VPCLMULQDQ with AVX-512: every tag is OpenSSL's"))
    func theAcceleratedHashGivesOpenSSLsTags() throws {
        let fast = try FrameAuthenticator(keys: keys, role: .worker)
        let openSSL = try FrameAuthenticator(keys: keys, role: .worker, accelerated: false)
        let data = SampleData.bytes(seed: 11, count: 300_000)
        var random = SystemRandomNumberGenerator()
        let lengths = [0, 1, 15, 16, 17, 255, 256, 257, 511, 512, 513, 767, 768, 1023, 1024, 1025, 102_400, 299_999]
        try data.withUnsafeBytes { d in
            for round in 0..<600 {
                var pieces: [UnsafeRawBufferPointer] = []
                var offset = 0
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    let n = round < lengths.count && pieces.isEmpty ? lengths[round] : Int.random(in: 0...(round % 5 == 0 ? 20_000 : 700), using: &random)
                    let count = min(n, data.count - offset)
                    pieces.append(UnsafeRawBufferPointer(rebasing: d[offset..<(offset + count)]))
                    offset += count
                }
                var a = [UInt8](repeating: 0, count: FrameTag.size), b = a
                try a.withUnsafeMutableBytes { try fast.seal(pieces, tag: $0.baseAddress!) }
                try b.withUnsafeMutableBytes { try openSSL.seal(pieces, tag: $0.baseAddress!) }
                #expect(a == b, "round \(round): pieces of \(pieces.map(\.count)) bytes")
            }
        }
    }

    @Test func aTagOverPiecesEqualsTheTagOverTheirConcatenation() throws {
        let data = SampleData.bytes(seed: 9, count: (4 << 20) + 3)
        let head = frame(3, [])
        let whole = try FrameAuthenticator(keys: keys, role: .worker).seal(head + data)
        var split = [UInt8](repeating: 0, count: FrameTag.size)
        let sender = try FrameAuthenticator(keys: keys, role: .worker)
        try head.withUnsafeBytes { h in
            try data.withUnsafeBytes { d in
                try split.withUnsafeMutableBytes { t in
                    try sender.seal([h, UnsafeRawBufferPointer(rebasing: d[..<17]), UnsafeRawBufferPointer(rebasing: d[17...])], tag: t.baseAddress!)
                }
            }
        }
        #expect(split == whole)
        let receiver = try FrameAuthenticator(keys: keys, role: .client)
        #expect(receiver.open(frame: head + data + split))
    }
}
