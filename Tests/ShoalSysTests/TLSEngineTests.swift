import Glibc
import Testing
import ShoalCore
import ShoalSys
import ShoalTestSupport

/// Moves all of `from`'s pending ciphertext into `to`, `chunk` bytes at a time (so records
/// arrive split). Returns the bytes moved and how many pieces they went in.
@discardableResult
private func pump(_ from: TLSEngine, _ to: TLSEngine, chunk: Int) -> (bytes: Int, pieces: Int) {
    var buffer = [UInt8](repeating: 0, count: chunk)
    var moved = 0
    var pieces = 0
    while from.pendingOutput > 0 {
        let n = buffer.withUnsafeMutableBytes { from.takeOutput(into: $0.baseAddress!, max: chunk) }
        guard n > 0 else { break }
        _ = buffer.withUnsafeBytes { to.feed(UnsafeRawBufferPointer(rebasing: $0.prefix(n))) }
        moved += n
        pieces += 1
    }
    return (moved, pieces)
}

/// Runs a handshake between the two engines in memory until neither has anything to send.
private func handshake(client: TLSEngine, server: TLSEngine, chunk: Int = 97) {
    _ = client.start()
    for _ in 0..<20 {
        let up = pump(client, server, chunk: chunk).bytes
        let down = pump(server, client, chunk: chunk).bytes
        if up == 0 && down == 0 { break }
    }
}

private func failure(_ p: TLSEngine.Progress) -> String? {
    if case .failed(let reason) = p { return reason }
    return nil
}

@Suite struct TLSEngineTests {
    let certificates: TestCertificates
    let serverContext: TLSContext

    init() throws {
        certificates = try TestCertificates.shared.get()
        serverContext = try TLSContext.server(certificateFile: certificates.certFile, keyFile: certificates.keyFile)
    }

    private func engines(ca: String? = nil, host: String? = "127.0.0.1") throws -> (client: TLSEngine, server: TLSEngine) {
        let clientContext = try TLSContext.client(caFile: ca ?? certificates.caFile)
        return (try TLSEngine(context: clientContext, host: host), try TLSEngine(context: serverContext))
    }

    /// Reads whatever plaintext `engine` has, `step` bytes at most per call, into `into`
    /// from `offset`. Returns the new offset and the number of calls that returned bytes.
    private func drain(_ engine: TLSEngine, into buffer: inout [UInt8], from offset: Int, step: Int) -> (Int, Int) {
        var at = offset
        var reads = 0
        while at < buffer.count {
            let n = buffer.withUnsafeMutableBytes { engine.readPlaintext(into: $0.baseAddress! + at, count: min(step, $0.count - at)) }
            guard let n, n > 0 else { break }
            at += n
            reads += 1
        }
        return (at, reads)
    }

    @Test func handshakeCompletesAndDataArrivesBothWays() throws {
        let (client, server) = try engines()
        #expect(client.progress == .handshaking && server.progress == .handshaking)
        #expect(client.start() == .handshaking)
        #expect(client.pendingOutput > 0, "no ClientHello")
        handshake(client: client, server: server)
        #expect(client.progress == .established)
        #expect(server.progress == .established)

        // Nothing sent yet: nothing to read, and no failure.
        var empty = [UInt8](repeating: 0, count: 16)
        #expect(empty.withUnsafeMutableBytes { server.readPlaintext(into: $0.baseAddress!, count: 16) } == 0)

        // 100 bytes client to server.
        let hello = SampleData.bytes(seed: 1, count: 100)
        #expect(hello.withUnsafeBytes { client.write([$0]) })
        #expect(client.pendingOutput > hello.count)
        pump(client, server, chunk: 37)
        var got = [UInt8](repeating: 0, count: 200)
        let n = got.withUnsafeMutableBytes { server.readPlaintext(into: $0.baseAddress!, count: $0.count) }
        #expect(n == hello.count)
        #expect(Array(got.prefix(hello.count)) == hello)

        // 4 MiB + 123 bytes server to client, pumped in 64 KiB pieces, read as they come.
        let big = SampleData.bytes(seed: 2, count: (4 << 20) + 123)
        #expect(big.withUnsafeBytes { server.write([$0]) })
        #expect(server.pendingOutput > big.count)
        var received = [UInt8](repeating: 0, count: big.count)
        var at = 0
        var pieces = 0
        var reads = 0
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while server.pendingOutput > 0 {
            let m = chunk.withUnsafeMutableBytes { server.takeOutput(into: $0.baseAddress!, max: $0.count) }
            #expect(m > 0)
            if m == 0 { break }
            #expect(chunk.withUnsafeBytes { client.feed(UnsafeRawBufferPointer(rebasing: $0.prefix(m))) } == .established)
            pieces += 1
            let (next, r) = drain(client, into: &received, from: at, step: 100_000)
            at = next
            reads += r
        }
        #expect(pieces > 1 && reads > 1)
        #expect(at == big.count)
        #expect(received == big)
        #expect(client.progress == .established && server.progress == .established)
    }

    /// Small pieces are gathered into records and large ones encrypted in place: what arrives
    /// is every piece, whole and in order.
    @Test func gatheredPiecesArriveInOrder() throws {
        let (client, server) = try engines()
        handshake(client: client, server: server)
        #expect(server.progress == .established)
        let parts = [
            SampleData.bytes(seed: 3, count: 16), SampleData.bytes(seed: 4, count: 40_000), [],
            SampleData.bytes(seed: 5, count: 16_384), SampleData.bytes(seed: 6, count: 3), SampleData.bytes(seed: 7, count: 16),
        ]
        let sent = parts.flatMap { $0 }
        let wrote = parts[0].withUnsafeBytes { a in
            parts[1].withUnsafeBytes { b in
                parts[2].withUnsafeBytes { c in
                    parts[3].withUnsafeBytes { d in
                        parts[4].withUnsafeBytes { e in parts[5].withUnsafeBytes { f in server.write([a, b, c, d, e, f]) } }
                    }
                }
            }
        }
        #expect(wrote)
        pump(server, client, chunk: 1000)
        var received = [UInt8](repeating: 0, count: sent.count + 10)
        let n = received.withUnsafeMutableBytes { client.readPlaintext(into: $0.baseAddress!, count: $0.count) }
        #expect(n == sent.count)
        #expect(Array(received.prefix(sent.count)) == sent)
    }

    @Test func aClientTrustingAnotherCAFailsOnTheCertificate() throws {
        let (client, server) = try engines(ca: certificates.otherCAFile)
        handshake(client: client, server: server)
        let reason = try #require(failure(client.progress), "the client accepted a certificate from a CA it does not trust")
        #expect(reason.contains("certificate"), "\(reason)")
        // The client's alert reached the server, which fails too.
        #expect(failure(server.progress) != nil, "server: \(server.progress)")
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(buffer.withUnsafeMutableBytes { client.readPlaintext(into: $0.baseAddress!, count: 16) } == nil)
        #expect(!buffer.withUnsafeBytes { client.write([$0]) })
    }

    @Test func aClientExpectingAnotherAddressFails() throws {
        let (client, server) = try engines(host: "10.9.9.9")
        handshake(client: client, server: server)
        let reason = try #require(failure(client.progress), "the client accepted a certificate for 127.0.0.1 as 10.9.9.9")
        #expect(reason.contains("certificate") && reason.contains("mismatch"), "\(reason)")
        #expect(server.progress != .established)
    }

    @Test func garbageFedToAServerFails() throws {
        let server = try TLSEngine(context: serverContext)
        #expect(server.start() == .handshaking)
        let garbage = Array("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8) + SampleData.bytes(seed: 8, count: 300)
        let p = garbage.withUnsafeBytes { server.feed($0) }
        let reason = try #require(failure(p), "\(p)")
        #expect(!reason.isEmpty)
        #expect(server.progress == p)
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(buffer.withUnsafeMutableBytes { server.readPlaintext(into: $0.baseAddress!, count: 16) } == nil)
        // More bytes change nothing.
        #expect(garbage.withUnsafeBytes { server.feed($0) } == p)

        // A well-formed record header, but application data before any handshake.
        let early = try TLSEngine(context: serverContext)
        let record: [UInt8] = [0x17, 0x03, 0x03, 0x00, 0x20] + SampleData.bytes(seed: 9, count: 0x20)
        let q = record.withUnsafeBytes { early.feed($0) }
        #expect(failure(q) != nil, "\(q)")
    }
}
