import Glibc
import Testing
import ShoalCore
@testable import ShoalSys
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
