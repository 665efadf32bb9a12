import Testing
import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalSys
import ShoalTestSupport
import ShoalTransport
@testable import ShoalWorker

/// What a client holding the secret can and cannot make a worker store or send.
@Suite(.serialized) struct IntegrityTests {
    /// One READ on its own connection; the bytes, or the worker's error.
    func read(_ h: Harness, _ block: BlockKey, offset: UInt32 = 0, length: UInt32) throws -> [UInt8] {
        let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
        defer { c.close() }
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(length), alignment: 16)
        defer { out.deallocate() }
        let id = try c.sendRead(ReadRequest(block: block, offset: offset, length: length), into: out.baseAddress!, length: Int(length))
        try c.receiveRead(id: id)
        return Array(out)
    }

    /// A READ that lies about the object's size (8 MiB + 4 KiB for a 10 MiB object, block 8) once
    /// cached a 4 KiB block that every honest reader of the object was then served, padded with
    /// another object's bytes under a valid CRC. The store's answer now decides: the lie is
    /// refused, nothing is cached, and honest readers get the object's bytes, before and after a
    /// restart.
    @Test func aLyingSizeNeverPoisonsTheCache() throws {
        let h = try Harness("poison")
        let data = SampleData.bytes(seed: 21, count: 10 << 20)
        try h.put("victim", data)
        try h.put("other", SampleData.bytes(seed: 22, count: 4 << 20))
        _ = try h.readAll("other")  // leaves another object's bytes in the worker's buffers
        let honest = try h.client.open(h.ref("victim"))

        var lie = honest.block(8)
        lie.objectSize = (8 << 20) + 4096
        let bigger = BlockKey(object: lie.object, etag: lie.etag, objectSize: 12 << 20, blockSize: lie.blockSize, index: 9)
        let pastTheEnd = BlockKey(object: lie.object, etag: lie.etag, objectSize: 12 << 20, blockSize: lie.blockSize, index: 11)
        for (block, length) in [(lie, UInt32(4096)), (bigger, UInt32(1 << 20)), (pastTheEnd, UInt32(1 << 20))] {
            #expect(throws: ShoalError.self, "\(block)") { _ = try read(h, block, length: length) }
        }
        // The worker knows the version now (the honest STAT): the lie is refused before any GET.
        let filled = h.metric("shoal_bytes_filled_total")
        #expect { _ = try read(h, lie, length: 4096) } throws: {
            let e = $0 as? ShoalError
            return e?.code == .badRequest && e!.message.contains("STAT it again")
        }
        #expect(h.metric("shoal_bytes_filled_total") == filled)

        #expect(try h.client.read(honest, offset: 0, length: 10 << 20) == data)
        #expect(try read(h, honest.block(8), length: 1 << 20) == Array(data[(8 << 20)..<(9 << 20)]))
        try h.restart()
        #expect(try h.readAll("victim") == data)
        #expect(h.metric("shoal_corrupt_blocks_total") == 0)
    }

    /// `s3://b/x/../data/fz` must never read `data/fz`: keys reach the store as written.
    @Test func dotSegmentsNeverNameAnotherObject() throws {
        let h = try Harness("dotkeys")
        try h.put("data/fz", SampleData.bytes(seed: 23, count: 1000))
        for key in ["x/../data/fz", "data/./fz"] {
            #expect(throws: ShoalError.self, "\(key)") { try h.readAll(key) }
        }
        #expect(try h.readAll("data/fz") == SampleData.bytes(seed: 23, count: 1000))
    }

    /// A READ's etag becomes the If-Match header of the worker's GET: with a line break in it, a
    /// client added headers of its own to the worker's signed request (the store answered 403).
    /// It is refused before any request leaves.
    @Test func anEtagCannotAddHeadersToTheWorkersStoreRequest() throws {
        let h = try Harness("etag-crlf")
        try h.put("o", SampleData.bytes(seed: 25, count: 1000))
        let honest = try h.client.open(h.ref("o"))
        var forged = honest.block(0)
        forged.etag += "\r\nX-Injected: 1"
        let fills = h.metric("shoal_fills_total")
        #expect { try read(h, forged, length: 10) } throws: {
            let e = $0 as? ShoalError
            return e?.code == .badRequest && e!.message.contains("control characters")
        }
        #expect(h.metric("shoal_fills_total") == fills, "no request went to the store")
        #expect(try read(h, honest.block(0), length: 1000) == SampleData.bytes(seed: 25, count: 1000))
    }

    /// With the store unreachable, a cached object is still read, at the last version the worker
    /// knew, flagged stale and counted; an answer of "not found" is never served stale, and with
    /// the switch off an outage is an error.
    @Test func cachedDataIsServedWhileTheStoreIsDown() throws {
        let fx = try ObjectStoreFixture.get()
        let relay = try TCPRelay(to: try #require(Endpoint(String(fx.credentials.endpoint.dropFirst("http://".count)))))
        defer { relay.cut() }
        func harness(_ name: String, stale: Bool) throws -> Harness {
            try Harness(name) { config in
                config.stores[0].endpoint = "http://\(relay.endpoint)"
                config.serveStaleOnOutage = stale
            }
        }
        let h = try harness("outage", stale: true)
        let data = SampleData.bytes(seed: 24, count: 3 << 20)
        try h.put("cached", data)
        try h.put("gone", [1, 2, 3])
        #expect(try h.readAll("cached") == data)
        #expect(try h.readAll("gone") == [1, 2, 3])
        #expect(try h.client.open(h.ref("cached")).stale == false)

        relay.cut()
        let file = try h.client.open(h.ref("cached"))
        #expect(file.stale)
        #expect(try h.client.read(file, offset: 0, length: 3 << 20) == data)
        #expect(h.metric("shoal_stale_versions_served_total") >= 1)

        let strict = try harness("outage-strict", stale: false)
        #expect { try strict.client.open(strict.ref("cached")) } throws: { ($0 as? ShoalError)?.code == .storeUnavailable }

        try relay.restore()
        try h.fx.store().delete(bucket: h.bucket, key: "gone")
        #expect { try h.client.open(h.ref("gone")) } throws: { ($0 as? ShoalError)?.code == .notFound }
        #expect(try h.client.open(h.ref("cached")).stale == false)
    }
}
