import Foundation
import Testing
import ShoalClient
import ShoalCore
import ShoalIO
import ShoalSys
import ShoalTransport
import ServiceLifecycle
@testable import ShoalWorker
import ShoalStore
import ShoalTestSupport
import Synchronization

/// Warm-up on one worker: probes and fill-only READs, the Warmer over them, manifests and pacing.
@Suite(.serialized) struct WarmTests {
    /// A fill-only READ caches its block even where admission would refuse a first miss, says
    /// it came from the store, and costs the store one GET; asked again, it says "cache" and costs
    /// none. A probe answers from the index: not cached, then cached, with nothing filled. Its GET
    /// runs on the fill thread that caches the block, or (where that many warms' GETs run on fill
    /// threads already) on the store's fetch thread: both ways are taken here.
    @Test(arguments: [true, false]) func fillOnlyReadsCacheEachBlockOnceAndSayWhereItCameFrom(onFillThread: Bool) throws {
        let h = try Harness("warm-fill-\(onFillThread)") { $0.admission.admitOnSecondMiss = true }
        if !onFillThread { h.worker.service.warmFetchesHere.store(0, ordering: .relaxed) }
        let data = SampleData.bytes(seed: 71, count: (2 << 20) + 12345)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let blocks = (0..<3).map { ShoalClient.BlockOfFile(file: file, index: UInt64($0)) }
        let fills = h.metric("shoal_fills_total")
        #expect(try h.client.probe(blocks).map { try $0.get() } == [false, false, false])
        #expect(h.metric("shoal_fills_total") == fills, "a probe filled something")
        #expect(try h.client.warm(blocks).map { try $0.get() } == [.store, .store, .store])
        #expect(h.metric("shoal_fills_total") == fills + 3)
        #expect(h.worker.service.warmFetchesDoneHere.load(ordering: .relaxed) == (onFillThread ? 3 : 0))
        #expect(try h.client.probe(blocks).map { try $0.get() } == [true, true, true])
        #expect(try h.client.warm(blocks).map { try $0.get() } == [.cache, .cache, .cache])
        #expect(h.metric("shoal_fills_total") == fills + 3)
        // Served from the cache now: no more fills.
        #expect(try h.readAll("o") == data)
        #expect(h.metric("shoal_fills_total") == fills + 3)
    }

    /// A warm that joins a reader's fill (which admission leaves uncached: it wants a second
    /// miss) caches the block itself before it answers, so a probe right after finds it.
    @Test func aWarmThatJoinsAReadersFillCachesTheBlockItself() throws {
        let fx = try ObjectStoreFixture.get()
        let storeURL = fx.credentials.endpoint
        let target = try #require(Endpoint(String(storeURL.dropFirst(storeURL.hasPrefix("https://") ? 8 : 7))))
        let relay = try TCPRelay(to: target)
        let h = try Harness("warm-join") { c in
            c.admission.admitOnSecondMiss = true
            c.stores[0].endpoint = "http://\(relay.endpoint)"
        }
        let data = SampleData.bytes(seed: 76, count: 300_000)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let block = ShoalClient.BlockOfFile(file: file, index: 0)
        let fills = h.metric("shoal_fills_total")
        relay.hold()
        let read = ReadOutcome()
        let client = h.client
        try OSThread.spawn(name: "reader") { read.set(Result { try client.read(file, offset: 0, length: data.count) }) }
        let deadline = monotonicNanos() + 10_000_000_000
        while h.metric("shoal_fills_total") == fills && monotonicNanos() < deadline { usleep(5_000) }
        #expect(h.metric("shoal_fills_total") == fills + 1, "the reader's fill did not start")
        let warmed = Outcome<BlockOrigin>()
        try OSThread.spawn(name: "warm") { warmed.set(Result { try client.warm([block])[0].get() }) }
        usleep(500_000)  // the warm's READ reaches the fill and waits on it
        relay.release()
        #expect(try read.wait().get() == data)
        let origin = try warmed.wait().get()
        #expect(try h.client.probe([block])[0].get() == true, "the warm said \(origin), but the block is not cached")
        // One GET when the warm joined the fill (origin cache); two if it came after (origin store).
        #expect(h.metric("shoal_fills_total") == fills + (origin == .cache ? 1 : 2))
    }

    /// A warm's fill-only READs on one connection are filled one at a time, in the order they
    /// came (its lane), the next as soon as one's GET ends: with the store's link held, three
    /// pipelined on one connection start one GET, and a second connection's READ starts its own
    /// at once. Released, each is answered in turn, from the store, and is cached. The client's
    /// `warm` with two lanes keeps two GETs going, however many blocks it has. A lane's next READ
    /// runs on the fill thread that ended the one before, or (no warm GET free on a fill thread)
    /// goes by the shard and the fetch thread: both ways are taken here.
    @Test(arguments: [true, false]) func aConnectionsWarmReadsAreFilledOneAtATime(onFillThread: Bool) throws {
        let fx = try ObjectStoreFixture.get()
        let storeURL = fx.credentials.endpoint
        let target = try #require(Endpoint(String(storeURL.dropFirst(storeURL.hasPrefix("https://") ? 8 : 7))))
        let relay = try TCPRelay(to: target)
        let h = try Harness("warm-lane-\(onFillThread)") { $0.stores[0].endpoint = "http://\(relay.endpoint)" }
        if !onFillThread { h.worker.service.warmFetchesHere.store(0, ordering: .relaxed) }
        for i in 0..<10 { try h.put("l/\(i)", SampleData.bytes(seed: 120 + UInt64(i), count: 50_000)) }
        let files = try (0..<10).map { try h.client.open(h.ref("l/\($0)")) }
        let fills = h.metric("shoal_fills_total")
        func fillsStarted(_ n: Double) -> Bool {
            let deadline = monotonicNanos() + 10_000_000_000
            while h.metric("shoal_fills_total") < fills + n && monotonicNanos() < deadline { usleep(5_000) }
            usleep(300_000)  // and no more
            return h.metric("shoal_fills_total") == fills + n
        }
        func connect() throws -> WorkerConnection {
            let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
            c.acceptsNoData = true
            return c
        }
        let nowhere = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
        defer { nowhere.deallocate() }
        func warm(_ c: WorkerConnection, _ file: ShoalFile) throws -> UInt32 {
            try c.sendRead(ReadRequest(block: file.block(0), offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag), into: nowhere, length: 0)
        }
        relay.hold()
        let lane = try connect()
        defer { lane.close() }
        let ids = try files[0..<3].map { try warm(lane, $0) }
        #expect(fillsStarted(1), "\(h.metric("shoal_fills_total") - fills) GETs for one connection's warm")
        let other = try connect()
        defer { other.close() }
        let otherID = try warm(other, files[3])
        #expect(fillsStarted(2), "\(h.metric("shoal_fills_total") - fills) GETs for two connections' warms")
        relay.release()
        var answered: [UInt32] = []
        for _ in ids {
            let (id, result) = try lane.receiveNext()
            #expect(try result.get() == .store)
            answered.append(id)
        }
        #expect(answered == ids, "a connection's warm READs were answered out of order")
        let (id, result) = try other.receiveNext()
        #expect(id == otherID)
        #expect(try result.get() == .store)
        #expect(try h.client.probe(files[0..<4].map { ShoalClient.BlockOfFile(file: $0, index: 0) }).map { try $0.get() } == [true, true, true, true])

        relay.hold()
        let client = h.client
        let rest = files[4...].map { ShoalClient.BlockOfFile(file: $0, index: 0) }
        let warmed = Outcome<[Result<BlockOrigin, ShoalError>]>()
        try OSThread.spawn(name: "warm") { warmed.set(Result { try client.warm(rest, inFlight: 2) }) }
        #expect(fillsStarted(6), "\(h.metric("shoal_fills_total") - fills - 4) GETs for a warm of two lanes")
        relay.release()
        #expect(try warmed.wait().get().map { try $0.get() } == Array(repeating: .store, count: 6))
        #expect(h.metric("shoal_fills_total") == fills + 10)
        #expect(h.worker.service.warmFetchesDoneHere.load(ordering: .relaxed) == (onFillThread ? 10 : 0))
    }

    /// A warm lane hands its READs out one at a time, in the order they came, through a lane
    /// that never goes idle (what it went past is dropped now and then); idle, the next READ
    /// starts at once; closed, it starts nothing more.
    @Test func aWarmLaneKeepsItsOrder() {
        let key = BlockKey(object: ObjectRef(store: "d", bucket: "b", key: "k"), etag: "e", objectSize: 1 << 20, blockSize: 1 << 20, index: 0)
        let request = ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag)
        func read(_ i: Int) -> WaitingRead { WaitingRead(connection: 0, generation: 0, requestID: UInt32(i), request: request) }
        let lane = WarmLane()
        #expect(lane.add(read(0))?.requestID == 0, "an idle lane did not start its READ")
        var sent = 1
        var next = 1
        for _ in 0..<300 {
            for _ in 0..<2 {
                #expect(lane.add(read(sent)) == nil, "a busy lane started a second READ")
                sent += 1
            }
            #expect(lane.next()?.requestID == UInt32(next))
            next += 1
        }
        while let r = lane.next() {
            #expect(r.requestID == UInt32(next))
            next += 1
        }
        #expect(next == sent)
        #expect(lane.add(read(sent))?.requestID == UInt32(sent), "an idle lane did not start its READ")
        #expect(lane.add(read(sent + 1)) == nil)
        lane.close()
        #expect(lane.next() == nil && lane.add(read(sent + 2)) == nil)
    }

    /// The Warmer over a prefix: counts, a check before and after, a re-run that finds it all
    /// cached, and objects that vanish or change between the listing and their fill, named;
    /// with the GETs on fill threads and on the fetch thread.
    @Test(arguments: [true, false]) func aWarmReportsWhatItCachedAndWhatFailedByName(onFillThread: Bool) throws {
        let h = try Harness("warm-prefix-\(onFillThread)")
        if !onFillThread { h.worker.service.warmFetchesHere.store(0, ordering: .relaxed) }
        for i in 0..<6 { try h.put("ds/\(i)", SampleData.bytes(seed: 80 + UInt64(i), count: 300_000 * (i + 1))) }
        try h.put("ds/empty", [])
        let prefix = ObjectPrefix(bucket: h.bucket, prefix: "ds/")
        func run(_ check: Bool) throws -> WarmSummary {
            var options = WarmOptions()
            options.checkOnly = check
            options.concurrency = 2
            var reports = 0
            let s = try Warmer(client: h.client, options: options).run([prefix]) { _ in reports += 1 }
            #expect(reports > 0)
            return s
        }
        let before = try run(true)
        #expect(before.progress.objectsTotal == 7 && before.progress.bytesResident == 0 && before.progress.objectsResident == 1, "only the empty object is whole")
        let warmed = try run(false)
        #expect(warmed.succeeded && warmed.progress.objectsNewlyCached == 6 && warmed.progress.objectsAlreadyCached == 1)
        #expect(warmed.progress.bytesNewlyCached == UInt64((1...6).reduce(0) { $0 + 300_000 * $1 }))
        #expect(warmed.progress.blocksFromStore == (1...6).reduce(0) { $0 + (300_000 * $1 + (1 << 20) - 1) >> 20 })
        let after = try run(true)
        #expect(after.progress.objectsResident == 7 && after.progress.bytesResident == after.progress.bytesTotal)
        let again = try run(false)
        #expect(again.succeeded && again.progress.objectsAlreadyCached == 7 && again.progress.blocksFromStore == 0)

        // Listed, then deleted or changed before the warm reaches them.
        try h.put("gone/a", SampleData.bytes(seed: 90, count: 5000))
        try h.put("gone/b", SampleData.bytes(seed: 91, count: 5000))
        try h.put("gone/c", SampleData.bytes(seed: 92, count: 5000))
        let listed = try h.client.listAll(bucket: h.bucket, prefix: "gone/")
        try h.fx.store().delete(bucket: h.bucket, key: "gone/a")
        try h.put("gone/b", SampleData.bytes(seed: 93, count: 5000))
        let files = try listed.map { try h.client.open(h.ref($0.key), version: $0.version) }
        let results = try h.client.warm(files.map { ShoalClient.BlockOfFile(file: $0, index: 0) })
        #expect(results.count == 3)
        if case .failure(let e) = results[0] { #expect(e.code == .notFound && e.message.contains("gone/a"), "\(e)") } else { Issue.record("a deleted object was warmed") }
        if case .failure(let e) = results[1] { #expect(e.code == .preconditionFailed && e.message.contains("gone/b"), "\(e)") } else { Issue.record("a changed object was warmed at its old version") }
        #expect((try? results[2].get()) == .store)

        // A prefix with nothing under it is named.
        let nothing = try Warmer(client: h.client, options: WarmOptions()).run([ObjectPrefix(bucket: h.bucket, prefix: "none/")]) { _ in }
        #expect(!nothing.succeeded && nothing.emptyPrefixes == [ObjectPrefix(bucket: h.bucket, prefix: "none/")])
    }

    /// A dataset opened from its manifest reads the versions it names, with no STAT.
    @Test func aDatasetOpensFromItsManifest() throws {
        let h = try Harness("warm-manifest")
        let data = (0..<3).map { SampleData.bytes(seed: 60 + UInt64($0), count: 70_000 + $0) }
        for (i, d) in data.enumerated() { try h.put("m/\(i)", d) }
        let summary = try Warmer(client: h.client, options: WarmOptions()).run([ObjectPrefix(bucket: h.bucket, prefix: "m/")]) { _ in }
        let m = Manifest(prefixes: [ObjectPrefix(bucket: h.bucket, prefix: "m/")], objects: summary.objects.map {
            Manifest.Entry(url: $0.url, size: $0.file.size, etag: $0.file.version.etag)
        })
        let path = makeTemporaryDirectory("manifest") + "/m.manifest"
        try m.write(to: path, created: "now")
        let fills = h.metric("shoal_fills_total")
        let files = try Manifest.read(path).open(with: h.client)
        #expect(files.map(\.object.key) == ["m/0", "m/1", "m/2"])
        for (f, d) in zip(files, data) { #expect(try h.client.read(f, offset: 0, length: d.count) == d) }
        #expect(h.metric("shoal_fills_total") == fills, "the warmed versions were fetched again")
    }

    /// Evicting a prefix drops its blocks, pinned ones too; the next read fills them again.
    @Test func evictDropsAPrefixsBlocks() throws {
        let h = try Harness("evict")
        try h.put("e/a", SampleData.bytes(seed: 1, count: (1 << 20) + 10))
        try h.put("e/b", SampleData.bytes(seed: 2, count: 5000))
        try h.put("keep/c", SampleData.bytes(seed: 3, count: 5000))
        #expect(h.worker.route(method: "POST", "/pins?prefix=s3://\(h.bucket)/e/").status == 200)
        let warmed = try Warmer(client: h.client, options: WarmOptions()).run([ObjectPrefix(bucket: h.bucket, prefix: "")]) { _ in }
        #expect(warmed.succeeded && warmed.progress.blocksFromStore == 4)
        let r = h.worker.route(method: "POST", "/evict?prefix=s3://\(h.bucket)/e/")
        #expect(r.status == 200 && h.json(r.body, "objects") as? Int == 2 && h.json(r.body, "blocks") as? Int == 3, "\(r.body)")
        var check = WarmOptions()
        check.checkOnly = true
        let after = try Warmer(client: h.client, options: check).run([ObjectPrefix(bucket: h.bucket, prefix: "")]) { _ in }
        #expect(after.progress.objectsResident == 1 && after.progress.bytesResident == 5000, "only keep/c is left")
        let fills = h.metric("shoal_fills_total")
        #expect(try h.readAll("e/a").count == (1 << 20) + 10)
        #expect(h.metric("shoal_fills_total") == fills + 2)
        #expect(h.worker.route(method: "POST", "/evict?prefix=s3://\(h.bucket)/none/").status == 404)
        #expect(h.worker.route(method: "GET", "/evict?prefix=s3://\(h.bucket)/e/").status == 405)
        #expect(h.worker.route(method: "POST", "/evict").status == 400)
    }

    @Test func aManifestReadsBackAndItsErrorsNameTheLine() throws {
        let m = Manifest(prefixes: [ObjectPrefix(bucket: "b", prefix: "p/")],
                         objects: [Manifest.Entry(url: "s3://b/p/x", size: 10, etag: "\"e1\""), Manifest.Entry(url: "s3://b/p/y\n", size: 0, etag: "e2")])
        let text = m.encoded(created: "2026-01-01T00:00:00Z")
        #expect(try Manifest.parse(Array(text.utf8), name: "m") == m)
        func error(_ s: String) -> String {
            do { _ = try Manifest.parse(Array(s.utf8), name: "m"); return "" } catch { return error.message }
        }
        #expect(error("{}") .contains("not a Shoal manifest"))
        let header = "{\"shoalManifest\":1,\"prefixes\":[\"s3://b/p/\"]}\n"
        #expect(error(header + "{\"url\":\"s3://b/k\",\"size\":1,\"etag\":\"e\"}\n{\"url\":\"s3://b/k\",\"size\":-1,\"etag\":\"e\"}").contains("line 3"))
        #expect(error(header + "{\"url\":\"http://b/k\",\"size\":1,\"etag\":\"e\"}").contains("line 2"))
        #expect(error("{\"shoalManifest\":1,\"prefixes\":[\"gs://b\"]}").contains("s3://"))
    }

    /// The bucket lets a second's worth through at once, then paces to the rate.
    @Test func aTokenBucketPacesBytesToItsRate() {
        let b = TokenBucket(bytesPerSecond: 1000)
        #expect(b.take(1000, now: 0) == 0)
        #expect(b.take(500, now: 0) == 500_000_000)
        // Half a second on, the debt is paid: 500 more wait another half second.
        #expect(b.take(500, now: 500_000_000) == 500_000_000)
        // Long idle: at most a second's worth is saved up.
        #expect(b.take(1000, now: 10_000_000_000) == 0)
        #expect(b.take(1, now: 10_000_000_000) > 0)
    }
}

/// Pins outlive a restart, expiring by the wall clock.
@Suite(.serialized) struct PinPersistenceTests {
    @Test func pinsSurviveARestartAndExpireByTheWallClock() throws {
        let h = try Harness("pins-restart")
        #expect(h.worker.route(method: "POST", "/pins?prefix=s3://\(h.bucket)/keep/&ttl=1h").status == 200)
        #expect(h.worker.route(method: "POST", "/pins?prefix=s3://\(h.bucket)/forever/").status == 200)
        // One that expired while the worker was down: written as it would be, an hour ago.
        try h.worker.cache.pins.add(PinRule(store: "default", bucket: h.bucket, prefix: "old/", expiresAt: wallClockSeconds() - 3600, bytes: 0))
        #expect(h.worker.cache.pins.active.count == 2)
        try h.restart()
        let rules = h.worker.cache.pins.active.sorted { $0.prefix < $1.prefix }
        #expect(rules.map(\.prefix) == ["forever/", "keep/"])
        let left = try #require(rules[1].expiresAt) - wallClockSeconds()
        #expect(left > 3500 && left <= 3600, "the TTL restarted or was lost: \(left) s left")
        #expect(rules[0].expiresAt == nil)
        let json = h.worker.route("/pins").body
        #expect(json.contains("\"prefix\":\"s3://\(h.bucket)/forever/\"") && json.contains("\"secondsLeft\":null"))
        // Unpinned, it stays unpinned after a restart.
        #expect(h.worker.route(method: "DELETE", "/pins?prefix=s3://\(h.bucket)/keep/").status == 200)
        try h.restart()
        #expect(h.worker.cache.pins.active.map(\.prefix) == ["forever/"])
    }

    /// A damaged pins file costs the pins, not the start: it is named, moved aside, and the
    /// worker goes on with none (and writes a good file again).
    @Test func aPinsFileThatDoesNotReadIsNamedAndMovedAside() throws {
        let dir = makeTemporaryDirectory("pins-bad")
        let path = dir + "/pins.json"
        try FileSystem.writeFile(path, Array("{\"pins\":[{\"store\":\"default\"}]}".utf8))
        let pins = PinSet()
        let warning = try #require(try pins.persist(to: path))
        #expect(warning.contains(path) && warning.contains("pin 0") && warning.contains(".damaged"), "\(warning)")
        #expect(pins.active.isEmpty)
        #expect(String(decoding: try FileSystem.readFile(path + ".damaged"), as: UTF8.self).contains("\"store\":\"default\""))
        #expect(String(decoding: try FileSystem.readFile(path), as: UTF8.self) == "{\"pins\":[]}\n")
        try FileSystem.writeFile(path, Array("not json".utf8))
        #expect(try PinSet().persist(to: path) != nil)
        // A good file reads without a word.
        #expect(try PinSet().persist(to: path) == nil)
    }
}

@Suite(.serialized) struct HotPrefixTests {
    /// A prefix read three times as often ranks above one read once, by reads and bytes, and the
    /// counts outlive a restart.
    @Test func theMoreReadPrefixRanksFirstAndIsKeptAcrossARestart() throws {
        let h = try Harness("hot")
        try h.put("often/o", SampleData.bytes(seed: 3, count: 100_000))
        try h.put("seldom/o", SampleData.bytes(seed: 4, count: 100_000))
        for _ in 0..<3 { _ = try h.readAll("often/o") }
        _ = try h.readAll("seldom/o")
        func ranked() -> String { h.worker.route("/hot?since=1h").body }
        let body = ranked()
        let often = try #require(body.range(of: "\"prefix\":\"s3://\(h.bucket)/often/\""))
        let seldom = try #require(body.range(of: "\"prefix\":\"s3://\(h.bucket)/seldom/\""))
        #expect(often.lowerBound < seldom.lowerBound, "\(body)")
        let first = try #require((h.json(body, "prefixes") as? [[String: Any]])?.first)
        #expect(first["prefix"] as? String == "s3://\(h.bucket)/often/" && first["reads"] as? Int == 3 && first["bytesRead"] as? Int == 300_000, "\(first)")
        let before = h.worker.service.datasets.hottest(since: 0, limit: 10)
        try h.restart()
        #expect(h.worker.service.datasets.hottest(since: 0, limit: 10) == before && before.count == 2)
        #expect(h.worker.route("/hot?since=soon").status == 400)
        #expect(h.worker.route("/hot?limit=0").status == 400)
    }
}

/// What a call made on another thread returned.
final class Outcome<Value>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var result: Result<Value, any Error>?

    func set(_ r: Result<Value, any Error>) {
        lock.withLock { result = r }
        lock.broadcast()
    }

    func wait() -> Result<Value, any Error> {
        lock.lock()
        defer { lock.unlock() }
        while result == nil { _ = lock.wait() }
        return result!
    }
}

/// The worker's warm-up queue: its share under load, and closing it.
@Suite(.serialized) struct WarmUpQueueTests {
    /// Under foreground work that never lets up, a warm's job still runs after at most
    /// `backgroundShare - 1` foreground ones; once the queue is closed, its waiting jobs and any
    /// submitted later are cancelled, never run.
    @Test func theWarmUpQueueGetsItsShareAndCancelsWhenClosed() throws {
        let pool = FillPool(threads: 1) { () throws(SysError) -> IORing in try IORing(entries: 4) }
        try pool.start()
        defer { pool.stop() }
        let log = JobLog()
        pool.submit { _ in log.gate() }
        #expect(log.waitUntilGated())
        for i in 0..<20 { pool.submit { _ in log.append("f\(i)") } }
        pool.submitBackground(FillPool.BackgroundJob(run: { _ in log.append("w") }, cancel: { log.append("cancelled") }))
        log.open()
        #expect(log.wait(count: 21))
        #expect(log.items.firstIndex(of: "w") == FillPool.backgroundShare - 1, "\(log.items)")
        // Closed while two wait (the one thread held): both cancelled, and a later one too.
        log.reset()
        pool.submit { _ in log.gate() }
        for _ in 0..<2 { pool.submitBackground(FillPool.BackgroundJob(run: { _ in log.append("w") }, cancel: { log.append("cancelled") })) }
        pool.closeBackground()
        pool.submitBackground(FillPool.BackgroundJob(run: { _ in log.append("w") }, cancel: { log.append("cancelled") }))
        log.open()
        pool.submit { _ in log.append("f") }
        #expect(log.wait(count: 4))
        #expect(log.items.sorted() == ["cancelled", "cancelled", "cancelled", "f"], "\(log.items)")
        #expect(pool.backgroundWaiting == 0)
    }

    /// Under the service group, `WarmUpService` saves the hot prefixes on its period; on
    /// graceful shutdown it closes the warm-up queue (a warm's fill is turned away with
    /// `shutting_down`) and saves them once more.
    @Test func theWarmUpServiceSavesHotPrefixesAndClosesTheQueueOnShutdown() async throws {
        let h = try Harness("warm-service")
        try h.put("ds/o", SampleData.bytes(seed: 5, count: 100_000))
        try h.put("ds/p", SampleData.bytes(seed: 6, count: 100_000))
        _ = try h.readAll("ds/o")
        let hotFile = try h.worker.config.resolvedStateDirectory() + "/hot.json"
        FileSystem.remove(hotFile)
        let group = ServiceGroup(services: [WarmUpService(worker: h.worker, saveEverySeconds: 0.05)], logger: testLogger)
        let running = Task { try await group.run() }
        var waited = 0
        while !FileSystem.exists(hotFile) && waited < 200 {
            try await Task.sleep(nanoseconds: 25_000_000)
            waited += 1
        }
        let saved = String(decoding: try FileSystem.readFile(hotFile), as: UTF8.self)
        #expect(saved.contains("\(h.bucket)/ds/"), "\(saved)")
        await group.triggerGracefulShutdown()
        try await running.value
        let file = try h.client.open(h.ref("ds/p"))
        let blocks = h.worker.cache.blockCount
        let outcome = try h.client.warm([ShoalClient.BlockOfFile(file: file, index: 0)])[0]
        #expect(throws: ShoalError.self) { try outcome.get() }
        // The worker said it is stopping: the client took it out of its routing at once (here
        // there is no other worker to go to, so the warm of the block fails with that reason).
        if case .failure(let e) = outcome { #expect(e.code == .shuttingDown, "\(e)") }
        #expect(h.worker.cache.blockCount == blocks, "a block was filled after the queue closed")
    }
}

/// What jobs did, in order; `gate` holds a job until `open`.
final class JobLog: @unchecked Sendable {
    private let lock = ConditionLock()
    private var entries: [String] = []
    private var closed = true
    private var gated = false

    func append(_ s: String) {
        lock.withLock { entries.append(s) }
        lock.broadcast()
    }

    func gate() {
        lock.lock()
        gated = true
        lock.broadcast()
        while closed { _ = lock.wait() }
        lock.unlock()
    }

    /// Waits up to 10 s for a job to be held at the gate.
    func waitUntilGated() -> Bool {
        let deadline = monotonicNanos() + 10_000_000_000
        lock.lock()
        defer { lock.unlock() }
        while !gated && monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
        return gated
    }

    func open() {
        lock.withLock { closed = false }
        lock.broadcast()
    }

    func reset() {
        lock.withLock {
            entries.removeAll()
            closed = true
            gated = false
        }
    }

    var items: [String] { lock.withLock { entries } }

    /// Waits up to 10 s for `count` entries.
    func wait(count: Int) -> Bool {
        let deadline = monotonicNanos() + 10_000_000_000
        lock.lock()
        defer { lock.unlock() }
        while entries.count < count && monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
        return entries.count >= count
    }
}
