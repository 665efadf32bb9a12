import Foundation
import Testing
import ShoalClient
import ShoalCore
import ShoalObjectStore
@testable import ShoalStore
import ShoalSys
import ShoalTestSupport
import ShoalTransport
@testable import ShoalWorker

/// A worker's /status, decoded.
func statusDocument(_ worker: Worker) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(worker.statusJSON().utf8)) as? [String: Any]) ?? [:]
}

/// A worker against the shared SeaweedFS, with a client for it.
final class Harness {
    let fx: ObjectStoreFixture
    let bucket: String
    let cacheDirectory: String
    var worker: Worker
    var client: ShoalClient
    let secret = "integration-secret"
    let blockSize: UInt64 = 1 << 20

    init(_ name: String, storeSecretKey: String? = nil, configure: (inout WorkerConfig) -> Void = { _ in }) throws {
        fx = try ObjectStoreFixture.get()
        bucket = try fx.makeBucket(name)
        cacheDirectory = makeTemporaryDirectory(name)
        var config = testWorkerConfig(cacheDirectory: cacheDirectory, store: fx.storeConfig(secretKey: storeSecretKey), secret: secret,
                                      blockSize: blockSize)
        configure(&config)
        worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        client = try ShoalClient(config: ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: worker.port)], secret: Array(secret.utf8)))
    }

    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: worker.port) }

    func ref(_ key: String) -> ObjectRef { ObjectRef(store: "default", bucket: bucket, key: key) }

    func put(_ key: String, _ bytes: [UInt8]) throws { try fx.store().put(bucket: bucket, key: key, bytes: bytes) }

    func readAll(_ key: String) throws -> [UInt8] {
        let f = try client.open(ref(key))
        return try client.read(f, offset: 0, length: Int(f.size))
    }

    /// Stops the worker and starts a new one on the same cache folder.
    func restart() throws {
        let config = worker.config
        worker.stopDataPlane()
        worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        client = try ShoalClient(config: ClientConfig(workers: [endpoint], secret: Array(secret.utf8)))
    }

    func metric(_ name: String) -> Double { worker.metrics.value(name) }

    /// The value of a JSON body (an admin page's) at `path`, e.g. ["memoryTier", "resident"].
    func json(_ body: String, _ path: String...) -> Any? {
        var v: Any? = try? JSONSerialization.jsonObject(with: Data(body.utf8))
        for key in path { v = (v as? [String: Any])?[key] }
        return v
    }

    deinit { worker.stopDataPlane() }
}

@Suite(.serialized) struct EndToEndTests {
    @Test func objectsOfEveryEdgeSizeReadBackExactlyColdThenWarm() throws {
        let h = try Harness("sizes")
        let bs = Int(h.blockSize)
        let sizes = [0, 1, bs - 1, bs, bs + 1, 100 << 20]
        for (i, size) in sizes.enumerated() {
            let data = SampleData.bytes(seed: UInt64(100 + i), count: size)
            try h.put("obj-\(size)", data)
            let blocks = Double((size + bs - 1) / bs)
            let missesBefore = h.metric("shoal_misses_total")
            let hitsBefore = h.metric("shoal_hits_total")
            let fillsBefore = h.metric("shoal_fills_total")
            #expect(try h.readAll("obj-\(size)") == data, "cold read of \(size) bytes")
            #expect(h.metric("shoal_misses_total") - missesBefore == blocks, "cold read of \(size) bytes misses every block")
            #expect(h.metric("shoal_fills_total") - fillsBefore == blocks, "cold read of \(size) bytes fills every block once")
            let filled = h.metric("shoal_bytes_filled_total")
            #expect(try h.readAll("obj-\(size)") == data, "warm read of \(size) bytes")
            #expect(h.metric("shoal_hits_total") - hitsBefore == blocks, "warm read of \(size) bytes hits every block")
            #expect(h.metric("shoal_bytes_filled_total") == filled, "warm read of \(size) bytes fetched nothing")
        }
        // A range that spans blocks, at odd offsets.
        let f = try h.client.open(h.ref("obj-\(100 << 20)"))
        let part = try h.client.read(f, offset: UInt64(bs) - 3, length: 3 * bs + 7)
        #expect(part == Array(SampleData.bytes(seed: 105, count: 100 << 20)[(bs - 3)..<(4 * bs + 4)]))
    }

    @Test func overwrittenObjectNeverReturnsOldBytes() throws {
        let h = try Harness("overwrite")
        let v1 = SampleData.bytes(seed: 1, count: 3 << 20)
        let v2 = SampleData.bytes(seed: 2, count: 3 << 20)
        try h.put("o", v1)
        #expect(try h.readAll("o") == v1)
        let openedAtV1 = try h.client.open(h.ref("o"))
        try h.put("o", v2)
        // A fresh open sees the new version (metadata TTL 0), even though v1's blocks are cached.
        #expect(try h.readAll("o") == v2)
        // The old handle still reads v1's cached blocks (consistent) ...
        #expect(try h.client.read(openedAtV1, offset: 0, length: 1 << 20) == Array(v1[0..<(1 << 20)]))
        // ... and an uncached range of v1 cannot be fetched any more: an error, never v2's bytes.
        let h2 = try Harness("overwrite-cold")
        try h2.put("o", v1)
        let old = try h2.client.open(h2.ref("o"))
        try h2.put("o", v2)
        #expect { try h2.client.read(old, offset: 0, length: 3 << 20) } throws: { ($0 as? ShoalError)?.code == .preconditionFailed }
    }

    @Test func missingObjectAndWrongCredentialsGiveClearErrors() throws {
        let h = try Harness("errors")
        #expect { try h.client.open(h.ref("nope/missing.bin")) } throws: {
            let e = $0 as? ShoalError
            return e?.code == .notFound && e!.message.contains("s3://\(h.bucket)/nope/missing.bin")
        }
        #expect { try h.client.open(ObjectRef(store: "elsewhere", bucket: h.bucket, key: "k")) } throws: {
            ($0 as? ShoalError)?.code == .unknownStore
        }
        try h.put("present", [1, 2, 3])
        let denied = try Harness("denied", storeSecretKey: "not-the-secret")
        try denied.fx.store().put(bucket: denied.bucket, key: "present", bytes: [1, 2, 3])
        #expect { try denied.client.open(denied.ref("present")) } throws: {
            let e = $0 as? ShoalError
            return e?.code == .accessDenied && e!.message.contains("access denied")
        }
        // A client with the wrong cluster secret is refused at the handshake.
        let stranger = try ShoalClient(config: ClientConfig(workers: [h.endpoint], secret: Array("guess".utf8)))
        #expect { try stranger.open(h.ref("present")) } throws: { ($0 as? ShoalError)?.code == .unauthenticated }
    }

    @Test func restartKeepsCachedBlocks() throws {
        let h = try Harness("restart")
        let data = SampleData.bytes(seed: 5, count: (5 << 20) + 17)
        try h.put("r", data)
        #expect(try h.readAll("r") == data)
        try h.restart()
        #expect(h.worker.cache.blockCount == 6)
        #expect(try h.readAll("r") == data)
        #expect(h.metric("shoal_hits_total") == 6)
        let row = try #require(statusDocument(h.worker)["datasets"].flatMap { $0 as? [[String: Any]] }?.first { $0["dataset"] as? String == "s3://\(h.bucket)/" })
        #expect(row["hits"] as? Int == 6 && row["misses"] as? Int == 0 && (row["hitRatio"] as? NSNumber)?.doubleValue == 1, "\(row)")
        // Cached blocks per dataset survive the restart (from the snapshot's counts).
        #expect(h.worker.statusJSON().contains("\"blocks\":6,\"bytesCached\":\(5 * (1 << 20) + 4096)"))
        #expect(h.metric("shoal_bytes_filled_total") == 0)
    }

    @Test func flippedByteOnDiskIsDetectedAndRefetched() throws {
        let h = try Harness("flip")
        let data = SampleData.bytes(seed: 6, count: 1 << 20)
        try h.put("f", data)
        #expect(try h.readAll("f") == data)
        h.worker.stopDataPlane()
        // The first record's data starts after the 1 MiB superblock area and its 4 KiB header.
        try flipByte(path: h.worker.cache.filePaths[0], at: (1 << 20) + 4096 + 12345)
        try h.restart()
        #expect(try h.readAll("f") == data)
        #expect(h.metric("shoal_corrupt_blocks_total") == 1)
        #expect(h.metric("shoal_bytes_filled_total") == Double(1 << 20))
        #expect(try h.readAll("f") == data)
        #expect(h.metric("shoal_hits_total") == 1)
    }

    @Test func malformedAndUnauthenticatedConnectionsAreRefusedWhileOthersRead() throws {
        let h = try Harness("frames")
        let data = SampleData.bytes(seed: 8, count: 4 << 20)
        try h.put("d", data)
        let file = try h.client.open(h.ref("d"))
        #expect(try h.client.read(file, offset: 0, length: 1 << 20) == Array(data[0..<(1 << 20)]))

        // Garbage: an ERROR frame, then the connection closes.
        let garbage = try TCPSocket.connect(h.endpoint, timeoutMillis: 2000)
        try garbage.send([UInt8](repeating: 0x41, count: 64))
        let reply = try garbage.receive(count: FrameHeader.size, deadline: monotonicNanos() + 5_000_000_000)
        let header = reply.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxPayload: 4096) }
        guard case .success(let e) = header else { Issue.record("no error frame: \(header)"); return }
        #expect(e.type == FrameType.error.rawValue && e.status == StatusCode.badRequest.rawValue)
        _ = try garbage.receive(count: Int(e.payloadLength), deadline: monotonicNanos() + 5_000_000_000)
        #expect(throws: SysError.self) { try garbage.receive(count: 1, deadline: monotonicNanos() + 5_000_000_000) }

        // A READ without a handshake is refused the same way.
        let rude = try TCPSocket.connect(h.endpoint, timeoutMillis: 2000)
        let req = ReadRequest(block: file.block(0), offset: 0, length: 10).encoded
        try rude.send(FrameHeader(type: .read, requestID: 1, payloadLength: UInt32(req.count)).bytes + req)
        let r2 = try rude.receive(count: FrameHeader.size, deadline: monotonicNanos() + 5_000_000_000)
        guard case .success(let e2) = r2.withUnsafeBytes({ FrameHeader.decode($0.baseAddress!, maxPayload: 4096) }) else { Issue.record("no reply"); return }
        #expect(e2.status == StatusCode.unauthenticated.rawValue)

        // An oversized frame after a valid handshake closes only that connection.
        let big = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
        try big.socket.send(FrameHeader(type: .read, requestID: 9, payloadLength: 1 << 30).bytes)
        let r3 = try big.socket.receive(count: FrameHeader.size, deadline: monotonicNanos() + 5_000_000_000)
        guard case .success(let e3) = r3.withUnsafeBytes({ FrameHeader.decode($0.baseAddress!, maxPayload: 4096) }) else { Issue.record("no reply"); return }
        #expect(e3.status == StatusCode.tooLarge.rawValue)

        // The well-behaved client's reads go on.
        #expect(try h.client.read(file, offset: 0, length: 4 << 20) == data)
        #expect(h.metric("shoal_errors_total{kind=\"bad_request\"}") >= 1)
    }

    @Test func concurrentReadersOfAMissFillEachBlockOnce() throws {
        let h = try Harness("flight")
        let data = SampleData.bytes(seed: 11, count: 8 << 20)
        try h.put("hot", data)
        let clients = try (0..<6).map { _ in
            try ShoalClient(config: ClientConfig(workers: [h.endpoint], secret: Array(h.secret.utf8)))
        }
        let results = ResultBox(count: clients.count)
        let ref = h.ref("hot")
        DispatchQueue.concurrentPerform(iterations: clients.count) { i in
            let bytes = try? clients[i].read(clients[i].open(ref), offset: 0, length: 8 << 20)
            results.set(i, bytes == data)
        }
        #expect(results.all)
        #expect(h.metric("shoal_bytes_filled_total") == Double(8 << 20))
        // One store GET per block; the readers that waited on it are misses, not fills.
        #expect(h.metric("shoal_fills_total") == 8)
        #expect(h.metric("shoal_misses_total") >= 8)
    }

    @Test func oneFailingDiskOfTwoDoesNotFailASingleRead() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("twodisks")
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("disk0"), store: fx.storeConfig())
        config.caches.append(CacheDiskConfig(path: makeTemporaryDirectory("disk1"), capacity: 256 << 20, regionSize: 8 << 20))
        let (worker, client) = try startWorker(config)
        defer { worker.stopDataPlane() }
        let data = SampleData.bytes(seed: 21, count: 24 << 20)
        try fx.store().put(bucket: bucket, key: "k", bytes: data)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "k"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        let failing = worker.cache.filePaths[0]
        FaultInjection.set(path: failing, .error(5))
        defer { FaultInjection.set(path: failing, nil) }
        for _ in 0..<3 { #expect(try client.read(file, offset: 0, length: data.count) == data) }
        let status = worker.statusJSON()
        #expect(status.contains("\"inService\":false") && status.contains("injected fault"))
        #expect(worker.cache.diskStats[1].failure == nil)
    }

    @Test func admitOnSecondMissServesTheFirstReadWithoutCachingIt() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("admission")
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("admission"), store: fx.storeConfig())
        config.admission.admitOnSecondMiss = true
        let (worker, client) = try startWorker(config)
        defer { worker.stopDataPlane() }
        let data = SampleData.bytes(seed: 31, count: 3 << 20)
        try fx.store().put(bucket: bucket, key: "k", bytes: data)
        let ref = ObjectRef(store: "default", bucket: bucket, key: "k")
        #expect(try client.read(client.open(ref), offset: 0, length: data.count) == data)
        #expect(worker.cache.blockCount == 0)
        #expect(try client.read(client.open(ref), offset: 0, length: data.count) == data)
        // A filled block is written to the cache after its reply has gone out.
        let deadline = monotonicNanos() + 5_000_000_000
        while worker.cache.blockCount < 3 && monotonicNanos() < deadline { usleep(10_000) }
        #expect(worker.cache.blockCount == 3)
        #expect(try client.read(client.open(ref), offset: 0, length: data.count) == data)
        #expect(worker.metrics.value("shoal_hits_total") == 3)
    }

    @Test func pinsAreCheckedAgainstTheRoomLeftAndCanBeRemoved() throws {
        let h = try Harness("pins")
        try h.put("small/a", SampleData.bytes(seed: 1, count: 1 << 20))
        try h.put("big/a", SampleData.bytes(seed: 2, count: 1 << 20))
        // The harness's cache: 256 MiB in 8 MiB regions, so 240 MiB of room for pins at most.
        let ok = h.worker.route(method: "POST", "/pins?prefix=s3%3A%2F%2F\(h.bucket)%2Fsmall%2F&ttl=1h")
        #expect(ok.status == 200 && ok.body.contains("\"bytes\":1048576"))
        let bytes = h.worker.cache.pinnableBytes
        try h.worker.cache.pins.add(PinRule(store: "default", bucket: h.bucket, prefix: "huge/", expiresAt: nil, bytes: bytes - (1 << 20)))
        let refused = h.worker.route(method: "POST", "/pins?prefix=s3://\(h.bucket)/big/")
        #expect(refused.status == 507 && refused.body.contains("refused"))
        #expect(h.worker.route(method: "DELETE", "/pins?prefix=s3://\(h.bucket)/small/").status == 200)
        #expect(h.worker.route(method: "DELETE", "/pins?prefix=s3://\(h.bucket)/small/").status == 404)
        #expect(h.worker.route(method: "POST", "/pins").status == 400)
        #expect(h.worker.route(method: "POST", "/pins?prefix=s3://\(h.bucket)/x&ttl=soon").status == 400)
    }

    @Test func thrashGuardCachesAStableSubsetOfADatasetLargerThanTheCache() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("thrash")
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("thrash"), store: fx.storeConfig(), capacity: 32 << 20)
        config.thrashGuard = true
        let (worker, client) = try startWorker(config)
        defer { worker.stopDataPlane() }
        let data = SampleData.bytes(seed: 41, count: 64 << 20)  // twice the cache
        try fx.store().put(bucket: bucket, key: "ds/shard", bytes: data)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "ds/shard"))
        for _ in 0..<2 { #expect(try client.read(file, offset: 0, length: data.count) == data) }
        #expect(worker.service.admission.snapshot.refusedSubset > 0)
        #expect(worker.metrics.value("shoal_hits_total") > 0, "the stable subset must be served from the cache on the second pass")
    }

    /// The isolating switches: serving from memory returns the right bytes without a cache disk
    /// write or read; answering without data is refused by an ordinary client with the switch's
    /// name, and taken by a client that opted in (its buffer untouched).
    @Test func benchmarkSwitchesServeFromMemoryAndAnswerWithoutData() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("switches")
        let data = SampleData.bytes(seed: 51, count: (2 << 20) + 123)
        try fx.store().put(bucket: bucket, key: "k", bytes: data)
        let ref = ObjectRef(store: "default", bucket: bucket, key: "k")

        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("memory"), store: fx.storeConfig())
        config.serveFromMemory = true
        config.memoryTier = 4 * ((1 << 20) + 4096)
        let (memoryWorker, client) = try startWorker(config)
        for _ in 0..<2 { #expect(try client.read(client.open(ref), offset: 0, length: data.count) == data) }
        #expect(try client.read(client.open(ref), offset: 1_000_003, length: 4096) == Array(data[1_000_003..<1_004_099]))
        #expect(memoryWorker.cache.blockCount == 0 && memoryWorker.cache.diskStats[0].bytesWritten == 0)
        #expect(memoryWorker.tierStats?.resident == 3)
        #expect(memoryWorker.metrics.value("shoal_hits_total") == 4)
        memoryWorker.stopDataPlane()

        config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("nodata"), store: fx.storeConfig())
        config.answerWithoutData = true
        let (worker, plain) = try startWorker(config)
        defer { worker.stopDataPlane() }
        #expect(throws: ShoalError.self) { try plain.read(plain.open(ref), offset: 0, length: 4096) }
        do { _ = try plain.read(plain.open(ref), offset: 0, length: 4096) } catch {
            #expect(error.message.contains("answerWithoutData"))
        }
        var optIn = ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: worker.port)], secret: config.secret)
        optIn.acceptsNoData = true
        let bench = try ShoalClient(config: optIn)
        #expect(try bench.read(bench.open(ref), offset: 0, length: data.count) == [UInt8](repeating: 0, count: data.count))
        #expect(worker.metrics.value("shoal_hits_total") > 0, "the worker still read its cache")
    }

    @Test func adminPortServesMetricsAndHealth() async throws {
        let fx = try ObjectStoreFixture.get()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("admin"), store: fx.storeConfig())
        config.admin = Endpoint(host: "127.0.0.1", port: 0)
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        try await worker.startAdmin()
        let port = try #require(worker.adminPort)
        let easy = try CurlEasy()
        let sink = HTTPBodySink(limit: 1 << 20)
        let r = try easy.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/metrics"), sink: sink)
        #expect(r.status == 200 && String(decoding: sink.bytes, as: UTF8.self).contains("shoal_hits_total"))
        let health = HTTPBodySink(limit: 1024)
        #expect(try easy.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/healthz"), sink: health).status == 200)
        #expect(try easy.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/nope"), sink: HTTPBodySink(limit: 1024)).status == 404)
        await worker.stop()
    }
}

/// A worker started on `config`, and a client for it (the caller stops the worker).
func startWorker(_ config: WorkerConfig) throws -> (Worker, ShoalClient) {
    let worker = try Worker(config: config, logger: testLogger)
    try worker.start()
    let client = try ShoalClient(config: ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: worker.port)], secret: config.secret))
    return (worker, client)
}

final class ResultBox: @unchecked Sendable {
    private var values: [Bool]
    private let lock = NSLock()
    init(count: Int) { values = Array(repeating: false, count: count) }
    func set(_ i: Int, _ v: Bool) { lock.lock(); values[i] = v; lock.unlock() }
    var all: Bool { lock.lock(); defer { lock.unlock() }; return values.allSatisfy { $0 } }
}
