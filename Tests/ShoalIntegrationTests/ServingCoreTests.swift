#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ShoalClient
@testable import ShoalCore
@testable import ShoalStore
@testable import ShoalSys
@testable import ShoalTransport
@testable import ShoalWorker
import ShoalTestSupport

/// The io shards' serving core: the DRAM tier, replies out of order, buffers shared fairly, and
/// what many connections cost.
@Suite(.serialized) struct ServingCoreTests {
    /// Threads of this process (worker and test client share it).
    static func threadCount() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? 0 }

    /// Resident memory of this process, bytes.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Overwrites every byte of the worker's cache files after their header with `byte`.
    static func damageCachedBytes(_ h: Harness, with byte: UInt8) throws {
        for path in h.worker.cache.filePaths {
            let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
            let fd = open(path, O_WRONLY)
            let junk = [UInt8](repeating: byte, count: 1 << 20)
            var at = Int(CacheFormatInfo.dataStart)
            while at < size { _ = junk.withUnsafeBytes { pwrite(fd, $0.baseAddress!, min(junk.count, size - at), off_t(at)) }; at += junk.count }
            close(fd)
        }
    }

    @Test func hotBlocksAreServedFromMemoryWithoutADiskRead() throws {
        let h = try Harness("memory-tier") { $0.memoryTier = 8 * ((1 << 20) + 4096) }
        let data = SampleData.bytes(seed: 41, count: 4 << 20)
        try h.put("o", data)
        // Cold, then warm from disk (the second access makes the blocks hot), then loaded into
        // the tier and served from it.
        for _ in 0..<4 { #expect(try h.readAll("o") == data) }
        let before = try #require(h.worker.tierStats)
        #expect(before.resident == 4 && before.hits >= 4, "\(before)")
        // Damage every cached byte on disk: hot blocks are still served, from memory.
        try Self.damageCachedBytes(h, with: 0xA5)
        let corruptBefore = h.metric("shoal_corrupt_blocks_total")
        #expect(try h.readAll("o") == data)
        let after = try #require(h.worker.tierStats)
        #expect(after.hits >= before.hits + 4 && h.metric("shoal_corrupt_blocks_total") == corruptBefore, "no disk read for hot blocks")
        // A 4 KiB range from the middle of a hot block, its CRC computed over just that range.
        let f = try h.client.open(h.ref("o"))
        #expect(try h.client.read(f, offset: (1 << 20) + 12345, length: 4096) == Array(data[((1 << 20) + 12345)..<((1 << 20) + 12345 + 4096)]))
        let tier = try #require(statusDocument(h.worker)["memoryTier"] as? [String: Any])
        #expect(tier["pages"] as? Int == 8 && tier["resident"] as? Int == 4 && tier["residentBytes"] as? Int == 4 << 20, "\(tier)")
    }

    /// Small objects take slots their size: 24 objects of 50 KiB, hot, all stay in a tier of two
    /// block-sized pages (which would hold two of them at a block a slot), and are served from
    /// memory with the disk damaged under them.
    @Test func smallObjectsShareTierPages() throws {
        let h = try Harness("memory-tier-small") { $0.memoryTier = 2 * ((1 << 20) + 4096) }
        let objects = (0..<24).map { (name: "small-\($0)", data: SampleData.bytes(seed: 500 + UInt64($0), count: 50 << 10)) }
        for o in objects { try h.put(o.name, o.data) }
        for _ in 0..<3 { for o in objects { #expect(try h.readAll(o.name) == o.data) } }
        let before = try #require(h.worker.tierStats)
        #expect(before.resident == 24 && before.residentBytes == 24 * (50 << 10), "\(before)")
        try Self.damageCachedBytes(h, with: 0x5A)
        for o in objects { #expect(try h.readAll(o.name) == o.data) }
        let after = try #require(h.worker.tierStats)
        #expect(after.hits >= before.hits + 24 && after.resident == 24, "\(after)")
    }

    @Test(arguments: [false, true]) func manyReadsInFlightOnOneConnectionComeBackWhole(zeroCopy: Bool) throws {
        let h = try Harness("pipelined-\(zeroCopy)") { $0.sendZeroCopy = zeroCopy }
        let data = SampleData.bytes(seed: 42, count: 6 << 20)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
        defer { c.close() }
        #expect(c.maxInFlight == h.worker.config.maxInFlight)
        // Small and large ranges of cold and warm blocks at once: replies come in whatever order
        // they complete, each into its own buffer.
        var ranges: [(UInt64, Int)] = []
        for i in 0..<24 {
            let offset = UInt64(i) * 250_000 + 17
            ranges.append((offset, i % 3 == 0 ? 300_000 : 4096))
        }
        let buffers = ranges.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.1, alignment: 16) }
        defer { buffers.forEach { $0.deallocate() } }
        var order: [UInt32] = []
        var ids: [UInt32] = []
        for (i, (offset, length)) in ranges.enumerated() {
            let layout = BlockLayout(blockSize: UInt64(file.blockSize))
            let piece = try #require(layout.pieces(offset: offset, length: UInt64(length)).first)
            // Only ranges inside one block, so one READ each.
            let request = ReadRequest(block: file.block(piece.index), offset: piece.offsetInBlock, length: piece.length)
            ids.append(try c.sendRead(request, into: buffers[i].baseAddress!, length: Int(piece.length)))
        }
        while c.inFlight > 0 {
            let (id, result) = try c.receiveNext()
            _ = try result.get()
            order.append(id)
        }
        #expect(Set(order) == Set(ids))
        for (i, (offset, _)) in ranges.enumerated() {
            let layout = BlockLayout(blockSize: UInt64(file.blockSize))
            let piece = layout.pieces(offset: offset, length: UInt64(ranges[i].1)).first!
            #expect(Array(buffers[i].prefix(Int(piece.length))) == Array(data[Int(offset)..<Int(offset) + Int(piece.length)]), "range \(i)")
        }
    }

    /// 40 connections that pipelined 4 MiB READs and never read a reply once took every I/O
    /// buffer, and every other client failed ("no I/O buffer came free"). Each connection now
    /// holds at most its share, requests beyond wait their turn, and a connection whose replies
    /// stop moving while others wait for buffers is closed.
    @Test func clientsThatStopReadingCannotStarveTheOthers() throws {
        let h = try Harness("starve") {
            $0.buffers = 8
            $0.buffersPerConnection = 2
            $0.replyStallTimeout = 1
        }
        let blocks = 32
        let data = SampleData.bytes(seed: 43, count: blocks << 20)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        _ = try h.client.read(file, offset: 0, length: data.count)  // cached: the attack is on the serving path
        let sink = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { sink.deallocate() }
        var attackers: [WorkerConnection] = []
        defer { attackers.forEach { $0.close() } }
        for _ in 0..<12 {
            let a = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
            for i in 0..<a.maxInFlight { _ = try a.sendRead(ReadRequest(block: file.block(UInt64(i % blocks)), offset: 0, length: 1 << 20), into: sink, length: 1 << 20) }
            attackers.append(a)
        }
        usleep(300_000)
        let started = monotonicNanos()
        let honest = try ShoalClient(config: ClientConfig(workers: [h.endpoint], secret: Array(h.secret.utf8)))
        let got = try honest.read(try honest.open(h.ref("o")), offset: 0, length: 8 << 20)
        let seconds = Double(monotonicNanos() - started) / 1e9
        #expect(got == Array(data.prefix(8 << 20)))
        #expect(seconds < 8, "an honest client waited \(seconds) s")
        #expect(h.metric("shoal_errors_total{kind=\"timeout\"}") >= 1, "stalled connections should have been closed")
    }

    /// Each shard listens on the port with a socket of its own (SO_REUSEPORT); a second worker
    /// started on that port must still fail, not share it.
    @Test func aSecondWorkerOnThePortIsRefused() throws {
        let h = try Harness("port-taken")
        var config = h.worker.config
        config.listen = Endpoint(host: "127.0.0.1", port: h.worker.port)
        config.caches = [CacheDiskConfig(path: makeTemporaryDirectory("port-taken-2"), capacity: 64 << 20, regionSize: 8 << 20)]
        let second = try Worker(config: config, logger: testLogger)
        defer { second.stopDataPlane() }
        #expect(throws: ShoalError.self) { try second.start() }
        // The first still serves.
        let data = SampleData.bytes(seed: 45, count: 4096)
        try h.put("o", data)
        #expect(try h.readAll("o") == data)
    }

    /// 1000 connections held open, each authenticated, a fifth of them with a read in flight:
    /// the worker's threads do not grow with them (a thread each, before) and its memory stays
    /// bounded. Perf/run.py measures the same for a worker process alone.
    @Test func aThousandConnectionsKeepThreadsAndMemoryBounded() throws {
        let h = try Harness("thousand") { $0.maxConnections = 1100 }
        let data = SampleData.bytes(seed: 44, count: 1 << 20)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let threadsBefore = ServingCoreTests.threadCount()
        let rssBefore = ServingCoreTests.residentBytes()
        var connections: [WorkerConnection] = []
        defer { connections.forEach { $0.close() } }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        for i in 0..<1000 {
            let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
            if i % 5 == 0 { _ = try c.sendRead(ReadRequest(block: file.block(0), offset: UInt32(i), length: 4096), into: buffer, length: 4096) }
            connections.append(c)
        }
        let threads = ServingCoreTests.threadCount() - threadsBefore
        let rss = ServingCoreTests.residentBytes() - rssBefore
        print("1000 connections: threads +\(threads), resident memory +\(rss >> 20) MiB (worker and client in one process)")
        // Other suites start and stop workers meanwhile: a thread per connection would be +1000.
        #expect(threads < 100, "threads grew by \(threads) with 1000 connections")
        #expect(rss < 300 << 20, "resident memory grew by \(rss >> 20) MiB")
        #expect(h.worker.statusJSON().contains("\"connections\":1001") || h.worker.statusJSON().contains("\"connections\":1000"))
        for (i, c) in connections.enumerated() where i % 5 == 0 {
            let (_, result) = try c.receiveNext()
            _ = try result.get()
            #expect(Array(UnsafeRawBufferPointer(start: buffer, count: 4096)) == Array(data[i..<i + 4096]), "connection \(i)")
        }
    }

    /// A client that sends far more READs than its connection may have in flight, and reads
    /// none of the replies, is not read past its limit: the worker's receive is held, so the
    /// client's sends stall once the kernel's buffers are full instead of piling up in the worker.
    @Test func aClientPastItsInFlightLimitIsNotRead() throws {
        let h = try Harness("held") { $0.allowUntaggedFrames = true }
        let data = SampleData.bytes(seed: 47, count: 1 << 20)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8), untaggedFrames: true)
        defer { c.close() }
        // 4 MiB of untagged READs of 64 KiB each, in 256 KiB sends.
        let read = ReadRequest(block: file.block(0), offset: 0, length: 65536).encoded
        var chunk: [UInt8] = []
        var id: UInt32 = 1
        while chunk.count < 256 << 10 {
            chunk += FrameHeader(type: .read, requestID: id, payloadLength: UInt32(read.count)).bytes + read
            id += 1
        }
        var sent = 0
        let deadline = monotonicNanos() + 3_000_000_000
        while sent < 256 << 20 && monotonicNanos() < deadline {
            do { try c.socket.send(chunk, deadline: min(deadline, monotonicNanos() + 500_000_000)) } catch { break }
            sent += chunk.count
        }
        print("a client that reads no replies sent \(sent >> 20) MiB of READs before its sends stalled")
        // Without the hold, the worker would take all 256 MiB (and a READ's worth of work each).
        #expect(sent < 64 << 20, "\(sent >> 20) MiB of READs were taken from a client past its limit")
        // Other clients are served meanwhile.
        #expect(try h.readAll("o") == data)
    }

    /// A worker whose only store is `server` (a canned S3 endpoint), serving one 3 MiB object
    /// (`data`) as version "v1", in 4 MiB blocks, filled by one GET each; TLS between client and worker when asked.
    static func cannedStoreWorker(_ name: String, server: CannedHTTPServer, data: [UInt8], tls: Bool = false,
                                  zeroCopy: Bool = false) throws -> (Worker, ShoalClient) {
        var store = StoreConfig(name: "default", kind: .s3)
        store.endpoint = server.url
        store.accessKey = "canned"
        store.secretKey = "canned-secret"
        let size = data.count
        server.respondToHead("200 OK", headers: ["ETag: \"v1\"", "Content-Length: \(size)"])
        server.respond("206 Partial Content", headers: ["ETag: \"v1\"", "Content-Range: bytes 0-\(size - 1)/\(size)"], body: data)
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory(name), store: store, blockSize: 4 << 20)
        // The canned store answers every GET with the whole object: one GET per block.
        config.fillParts = 1
        config.sendZeroCopy = zeroCopy
        var clientConfig = ClientConfig(workers: [], secret: Array("test-secret-0123456789".utf8))
        if tls {
            let certs = try TestCertificates.shared.get()
            config.tls = TLSFiles(certFile: certs.certFile, keyFile: certs.keyFile)
            clientConfig.tlsCAFile = certs.caFile
        }
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        clientConfig.workers = [Endpoint(host: "127.0.0.1", port: worker.port)]
        return (worker, try ShoalClient(config: clientConfig))
    }

    /// A cold block's bytes reach the client while the store is still sending it: the reply's
    /// CRC comes after the data, so the worker sends what has come, and the rest when it comes.
    @Test(arguments: [(false, false), (true, false), (false, true)])
    func aColdBlockStreamsToTheClientWhileTheStoreSendsIt(tls: Bool, zeroCopy: Bool) throws {
        let server = try CannedHTTPServer()
        let data = SampleData.bytes(seed: 45, count: 3 << 20)
        let (worker, client) = try ServingCoreTests.cannedStoreWorker("streams-\(tls)-\(zeroCopy)", server: server, data: data, tls: tls,
                                                                       zeroCopy: zeroCopy)
        defer { worker.stopDataPlane() }
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "o"))
        server.hold(after: 1 << 20)
        let result = ReadOutcome()
        try OSThread.spawn(name: "reader") { result.set(Result { try client.read(file, offset: 0, length: data.count) }) }
        // Bytes go out while the store holds the rest of the block back.
        let deadline = monotonicNanos() + 10_000_000_000
        while worker.metrics.value("shoal_bytes_streamed_total") < Double(512 << 10) && monotonicNanos() < deadline { usleep(10_000) }
        let early = worker.metrics.value("shoal_bytes_streamed_total")
        #expect(early >= Double(512 << 10) && early <= Double(1 << 20), "\(early) bytes sent before the store sent more than 1 MiB")
        #expect(result.value == nil, "the read waits for the rest")
        server.release()
        #expect(try result.wait().get() == data)
        #expect(worker.metrics.value("shoal_replies_streamed_total") == 1)
        #expect(worker.metrics.value("shoal_bytes_streamed_total") == Double(data.count))
        // Warm, the same bytes come whole from the cache.
        #expect(try client.read(file, offset: 0, length: data.count) == data)
    }

    /// Replies to other READs of a connection wait behind a streaming one and come after it,
    /// whole and with their tags in sequence (a warm hit sent after a cold READ that streams).
    @Test(arguments: [false, true]) func aReplyQueuedBehindAStreamComesWholeAfterIt(tls: Bool) throws {
        let server = try CannedHTTPServer()
        let data = SampleData.bytes(seed: 52, count: 6 << 20)
        let (worker, client) = try ServingCoreTests.cannedStoreWorker("behind-\(tls)", server: server, data: data, tls: tls)
        defer { worker.stopDataPlane() }
        server.serveObject(data, etag: "\"v1\"")
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "o"))
        // Block 1 (the last 2 MiB) cached; block 0 cold, its store held after 1 MiB.
        #expect(try client.read(file, offset: 4 << 20, length: 2 << 20) == Array(data[(4 << 20)...]))
        server.hold(after: 1 << 20)
        var tlsContext: TLSContext?
        if tls { tlsContext = try TLSContext.client(caFile: try TestCertificates.shared.get().caFile) }
        let c = try WorkerConnection(endpoint: Endpoint(host: "127.0.0.1", port: worker.port), secret: Array("test-secret-0123456789".utf8),
                                     tls: tlsContext)
        defer { c.close() }
        let cold = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 16)
        let warm = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { cold.deallocate(); warm.deallocate() }
        let before = worker.metrics.value("shoal_bytes_streamed_total")
        let coldID = try c.sendRead(ReadRequest(block: file.block(0), offset: 0, length: 4 << 20), into: cold.baseAddress!, length: 4 << 20)
        let deadline = monotonicNanos() + 10_000_000_000
        while worker.metrics.value("shoal_bytes_streamed_total") < before + Double(512 << 10) && monotonicNanos() < deadline { usleep(10_000) }
        #expect(worker.metrics.value("shoal_bytes_streamed_total") >= before + Double(512 << 10), "block 0 is streaming")
        let warmID = try c.sendRead(ReadRequest(block: file.block(1), offset: 777, length: 4096), into: warm.baseAddress!, length: 4096)
        usleep(200_000)  // the hit is served now, and its reply waits behind the stream
        server.release()
        var order: [UInt32] = []
        for _ in 0..<2 {
            let (id, result) = try c.receiveNext()
            _ = try result.get()
            order.append(id)
        }
        #expect(order == [coldID, warmID], "the waiting reply came after the streamed one")
        #expect(Array(cold) == Array(data[0..<(4 << 20)]))
        #expect(Array(warm) == Array(data[((4 << 20) + 777)..<((4 << 20) + 777 + 4096)]))
    }

    /// A store that stops halfway through a block: the client gets an error, never the bytes
    /// that came; the worker goes on serving, and a later read of the block is whole.
    @Test func aStoreThatStopsMidBlockFailsTheReadAndNothingElse() throws {
        let server = try CannedHTTPServer()
        let data = SampleData.bytes(seed: 46, count: 3 << 20)
        let (worker, client) = try ServingCoreTests.cannedStoreWorker("cut", server: server, data: data)
        defer { worker.stopDataPlane() }
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "o"))
        server.cut(after: (1 << 20) + 12345)
        #expect(throws: ShoalError.self) { _ = try client.read(file, offset: 0, length: data.count) }
        #expect(worker.metrics.value("shoal_bytes_streamed_total") > 0, "the reply had started")
        #expect(worker.metrics.value("shoal_replies_streamed_total") == 0)
        #expect(worker.metrics.value("shoal_cached_blocks") == 0)
        server.release()
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(try client.read(file, offset: 12345, length: 4096) == Array(data[12345..<(12345 + 4096)]))
    }
}

/// A value set once by another thread, and waited for.
final class ReadOutcome: @unchecked Sendable {
    private let lock = ConditionLock()
    private var result: Result<[UInt8], any Error>?

    func set(_ r: Result<[UInt8], any Error>) {
        lock.withLock { result = r }
        lock.broadcast()
    }

    var value: Result<[UInt8], any Error>? { lock.withLock { result } }

    func wait() -> Result<[UInt8], any Error> {
        lock.lock()
        defer { lock.unlock() }
        while result == nil { _ = lock.wait() }
        return result!
    }
}
