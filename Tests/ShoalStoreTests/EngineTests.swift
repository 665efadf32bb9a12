import Glibc
import Testing
import ShoalCore
@testable import ShoalStore
import ShoalIO
import ShoalSys
import ShoalTestSupport

/// Blocks of 64 KiB in 1 MiB regions: many regions cycle quickly.
struct Engine {
    let dir: String
    let pool: BufferPool
    let slot: IOSlot
    let object = ObjectRef(store: "default", bucket: "b", key: "engine")
    var config: CacheDiskConfig

    init(_ name: String, capacity: UInt64 = 8 << 20, regionSize: UInt64 = 1 << 20) throws {
        dir = makeTemporaryDirectory(name)
        pool = try BufferPool(bufferSize: (64 << 10) + 4096, count: 1)
        slot = pool.acquire()!
        config = CacheDiskConfig(path: dir, capacity: capacity, regionSize: regionSize)
        // These tests check what eviction keeps, so every insert must land even on a loaded
        // machine; dropping inserts when the cleaner is behind has its own test.
        config.cleanRegionWaitSeconds = 30
    }

    func open() throws -> BlockCache { try BlockCache(disks: [config], expectedBlockSize: 64 << 10, logger: testLogger) }

    /// Block `i` of an object version whose block `i` is the last, `length(i)` bytes long.
    func key(_ i: UInt64) -> BlockKey {
        BlockKey(object: object, etag: "e", objectSize: i * (64 << 10) + UInt64(length(i)), blockSize: 64 << 10, index: i)
    }

    func length(_ i: UInt64) -> Int { i % 7 == 0 ? 1000 + Int(i % 5000) : 64 << 10 }

    func put(_ cache: BlockCache, _ i: UInt64, pinned: Bool = false) throws {
        let n = length(i)
        let data = UnsafeMutableRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: n)
        SampleData.fill(data, seed: i + 1)
        try cache.insert(key: key(i), id: key(i).id, slot: slot, length: n, crc: CRC32C.checksum(UnsafeRawBufferPointer(data)), pinned: pinned)
    }

    /// True if block i is served with exactly its bytes; false if it is a miss; records an issue
    /// if wrong bytes would have been served.
    func check(_ cache: BlockCache, _ i: UInt64) -> Bool {
        // What the cache holds once its background work (sealing, eviction, moves) is done.
        cache.waitForBackgroundWork()
        switch cache.read(key: key(i), id: key(i).id, into: slot) {
        case .hit(let n, _):
            let expected = SampleData.bytes(seed: i + 1, count: length(i))
            let same = n == expected.count && memcmp(slot.base + BlockCache.dataOffset, expected, n) == 0
            #expect(same, "block \(i) served wrong bytes")
            return same
        case .miss, .corrupt:
            return false
        }
    }
}

@Suite struct EngineTests {
    @Test func randomLoadNeverPassesTheCap() throws {
        let e = try Engine("cap-random")
        let cache = try e.open()
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<600 {
            try e.put(cache, UInt64.random(in: 0..<400, using: &rng))
            #expect(cache.bytesCached <= cache.capacity)
        }
        #expect(FileSystem.info(cache.filePaths[0])!.size == (1 << 20) + cache.capacity)
        for i in 0..<400 { _ = e.check(cache, UInt64(i)) }
    }

    @Test func blocksReadSinceWrittenSurviveEviction() throws {
        let e = try Engine("clock")
        let cache = try e.open()
        for i in 0..<20 { try e.put(cache, UInt64(i)) }
        let hot: [UInt64] = [2, 5, 11]
        for round in 0..<6 {
            for h in hot { #expect(e.check(cache, h), "hot block \(h) lost in round \(round)") }
            for i in 0..<40 { try e.put(cache, UInt64(1000 + round * 40 + i)) }
        }
        for h in hot { #expect(e.check(cache, h)) }
        #expect(!e.check(cache, 3), "a cold block outlived eight regions of new data")
        #expect(cache.diskStats[0].reinserted > 0)
        // Per-dataset counts agree with the index, evictions included.
        let tag = e.object.datasetTag
        #expect(cache.datasetBlocks[tag]?.blocks == cache.blockCount)
        #expect((cache.datasetBlocks[tag]?.evictions ?? 0) > 0)
    }

    @Test func pinnedBlocksSurvivePressureUntilThePinExpires() throws {
        let e = try Engine("pins")
        let cache = try e.open()
        // Pin the object "engine" (its blocks 0-4); the pressure comes from another object.
        try cache.pins.add(PinRule(store: "default", bucket: "b", prefix: "engine", expiresAt: wallClockSeconds() + 0.6, bytes: 0))
        for i in 0..<5 { try e.put(cache, UInt64(i)) }
        let other = ObjectRef(store: "default", bucket: "b", key: "other")
        func putOther(_ i: UInt64) throws {
            let data = UnsafeMutableRawBufferPointer(start: e.slot.base + BlockCache.dataOffset, count: 64 << 10)
            SampleData.fill(data, seed: i)
            let k = BlockKey(object: other, etag: "e", objectSize: 1 << 30, blockSize: 64 << 10, index: i)
            try cache.insert(key: k, id: k.id, slot: e.slot, length: 64 << 10, crc: CRC32C.checksum(UnsafeRawBufferPointer(data)))
        }
        for i in 0..<400 { try putOther(UInt64(i)) }
        for i in 0..<5 { #expect(e.check(cache, UInt64(i)), "pinned block \(i) was evicted") }
        // After the pin expires, pressure evicts them like any block not read since written.
        Glibc.usleep(700_000)
        #expect(cache.pins.active.isEmpty)
        for i in 0..<5 { _ = e.check(cache, UInt64(i)) }  // reads set the hit bit once more...
        for i in 0..<800 { try putOther(UInt64(1000 + i)) }  // ...so two passes of pressure are needed
        var left = 0
        for i in 0..<5 where e.check(cache, UInt64(i)) { left += 1 }
        #expect(left == 0, "expired pins still kept \(left) blocks")
    }

    @Test func cleanRestartUsesTheSnapshotAndCrashRestartUsesFooters() throws {
        let e = try Engine("restart", capacity: 16 << 20)
        do {
            let cache = try e.open()
            for i in 0..<120 { try e.put(cache, UInt64(i)) }
            cache.close()  // clean: snapshot
        }
        let snapshot = e.dir + "/" + CacheDisk.snapshotName
        #expect(FileSystem.exists(snapshot))
        var survivors = 0
        do {
            let cache = try e.open()
            #expect(cache.diskStats[0].recoveredFrom == "snapshot")
            #expect(!FileSystem.exists(snapshot), "a snapshot must be used once")
            for i in 0..<120 where e.check(cache, UInt64(i)) { survivors += 1 }
            #expect(survivors >= 100)
            for i in 0..<30 { try e.put(cache, UInt64(500 + i)) }
            // No close(): as after kill -9, the next start has only footers and records.
        }
        let cache = try e.open()
        #expect(cache.diskStats[0].recoveredFrom == "regions")
        #expect(cache.datasetBlocks[e.object.datasetTag]?.blocks == cache.blockCount, "per-dataset counts rebuilt from footers")
        #expect(cache.diskStats[0].regionsWalked == 1, "only the region written at the crash lacks a footer")
        var after = 0
        for i in 0..<120 where e.check(cache, UInt64(i)) { after += 1 }
        for i in 0..<30 { #expect(e.check(cache, UInt64(500 + i)), "block written just before the crash lost") }
        #expect(after >= survivors - 20)
    }

    @Test func tornRecordAfterCrashIsNeverServed() throws {
        let e = try Engine("torn")
        do {
            let cache = try e.open()
            for i in 0..<5 { try e.put(cache, UInt64(i)) }
        }
        // A crash mid-write of block 5: its header made it to disk, its data did not.
        let cache0 = try e.open()
        try e.put(cache0, 5)
        let file = cache0.filePaths[0]
        let lastData = UInt64(1 << 20) + UInt64(5 * (68 << 10)) + 4096
        let garbage = [UInt8](repeating: 0x5a, count: 8192)
        let h = try FileHandle.open(file)
        try garbage.withUnsafeBytes { try h.write($0.baseAddress!, count: 8192, at: lastData) }
        try h.sync()
        let cache = try e.open()
        for i in 0..<5 { #expect(e.check(cache, UInt64(i))) }
        #expect(!e.check(cache, 5))
    }

    @Test func corruptionAtRandomOffsetsIsNeverServed() throws {
        let e = try Engine("random-corruption", capacity: 16 << 20)
        do {
            let cache = try e.open()
            for i in 0..<200 { try e.put(cache, UInt64(i)) }
            cache.close()
        }
        let file = e.dir + "/" + CacheDisk.fileName
        let size = FileSystem.info(file)!.size
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 { try flipByte(path: file, at: UInt64.random(in: 0..<size, using: &rng)) }
        // Also damage the snapshot, so recovery falls back to (partly damaged) footers.
        try flipByte(path: e.dir + "/" + CacheDisk.snapshotName, at: 40)
        let cache = try e.open()
        var served = 0
        for i in 0..<200 where e.check(cache, UInt64(i)) { served += 1 }
        // Every served block was byte-exact (check records an issue otherwise); most survived.
        #expect(served > 50)
    }

    @Test func failingDiskIsTakenOutAndTheOtherServes() throws {
        let a = makeTemporaryDirectory("disk-a")
        let b = makeTemporaryDirectory("disk-b")
        let e = try Engine("two-disks")
        var ca = CacheDiskConfig(path: a, capacity: 8 << 20, regionSize: 1 << 20)
        ca.stallTimeoutSeconds = 0.2
        let cb = CacheDiskConfig(path: b, capacity: 8 << 20, regionSize: 1 << 20)
        let cache = try BlockCache(disks: [ca, cb], expectedBlockSize: 64 << 10, logger: testLogger)
        for i in 0..<40 { try e.put(cache, UInt64(i)) }
        FaultInjection.set(path: a + "/" + CacheDisk.fileName, .error(EIO))
        defer { FaultInjection.set(path: a + "/" + CacheDisk.fileName, nil) }
        for i in 0..<40 { _ = e.check(cache, UInt64(i)) }  // disk a's blocks fail once, then a is out
        // Taken out by a read, or by its cleaner's write (a footer) if that came first.
        let failure = cache.diskStats[0].failure ?? "in service"
        #expect((failure.contains("read error") || failure.contains("write error")) && failure.contains("injected fault"), "\(failure)")
        for i in 0..<40 { try e.put(cache, UInt64(i)) }  // refilled onto disk b
        for i in 0..<40 { #expect(e.check(cache, UInt64(i)), "block \(i) not served after its disk failed") }
        #expect(cache.diskStats[1].failure == nil)
    }

    @Test func stallingDiskIsTakenOut() throws {
        let e = try Engine("stall")
        var config = e.config
        config.stallTimeoutSeconds = 0.05
        let cache = try BlockCache(disks: [config], expectedBlockSize: 64 << 10, logger: testLogger)
        try e.put(cache, 1)
        FaultInjection.set(path: e.dir + "/" + CacheDisk.fileName, .delay(nanos: 200_000_000))
        defer { FaultInjection.set(path: e.dir + "/" + CacheDisk.fileName, nil) }
        _ = e.check(cache, 1)
        #expect(cache.diskStats[0].failure?.contains("took") == true)
        #expect(!e.check(cache, 1))
    }
}

/// Sealing and eviction run on each disk's cleaner thread, never on an insert.
@Suite struct CleanerTests {
    @Test func theCleanerSealsFullRegionsAndKeepsOneReady() throws {
        let e = try Engine("cleaner-ready")
        let cache = try e.open()
        let disk = cache.cacheDisks[0]
        cache.waitForBackgroundWork()
        #expect(disk.cleaner.readyRegions.map(\.region) == [1], "a clean region is ready before the first one fills")
        let first = disk.writer.active
        var i: UInt64 = 0
        while disk.writer.active.region == first.region {
            try e.put(cache, i)
            i += 1
        }
        cache.waitForBackgroundWork()
        // The full region got its footer in the background, listing every block written to it.
        let footer = RegionFooter.read(first.region, generation: first.generation, state: disk.state, slot: disk.cleaner.slot)
        #expect(footer?.count == Int(i) - 1)
        #expect(disk.cleaner.readyRegions.map(\.region) == [2])
        #expect(cache.diskStats[0].regionSwitches == 1)
    }

    /// With the cleaner paused, inserts past the clean room are dropped and counted: the
    /// inserting thread never evicts. Resumed, the cleaner evicts and inserts land again.
    @Test func insertsNeverEvictOnTheirOwnThread() throws {
        var e = try Engine("cleaner-paused")
        e.config.cleanRegionWaitSeconds = 0
        let cache = try e.open()
        let disk = cache.cacheDisks[0]
        // Fill every region once, so further inserts need eviction.
        var i: UInt64 = 0
        while disk.writer.active.region != disk.regionCount - 1 {
            cache.waitForBackgroundWork()
            try e.put(cache, i)
            i += 1
        }
        cache.waitForBackgroundWork()
        disk.cleaner.setPaused(true)
        let before = cache.diskStats[0]
        var landed = 0
        var dropped = 0
        for j in 0..<100 {
            let k = e.key(5000 + UInt64(j))
            let data = UnsafeMutableRawBufferPointer(start: e.slot.base + BlockCache.dataOffset, count: e.length(5000 + UInt64(j)))
            if try cache.insert(key: k, id: k.id, slot: e.slot, length: data.count, crc: CRC32C.checksum(UnsafeRawBufferPointer(data))) {
                landed += 1
            } else {
                dropped += 1
            }
        }
        let paused = cache.diskStats[0]
        #expect(paused.evictions == before.evictions, "an insert evicted blocks itself")
        #expect(paused.reinserted == before.reinserted)
        #expect(dropped > 0 && paused.insertsDropped == before.insertsDropped + UInt64(dropped))
        #expect(landed < 100)
        disk.cleaner.setPaused(false)
        cache.waitForBackgroundWork()
        #expect(cache.diskStats[0].evictions > before.evictions, "the cleaner evicted the oldest region once resumed")
        try e.put(cache, 9999)
        #expect(e.check(cache, 9999))
    }
}

extension CleanerTests {
    /// Readers race the writer and the cleaner (regions reused, hot blocks moved under them): a
    /// read may miss, but every hit is byte-exact.
    @Test func readsRacingTheCleanerNeverServeAWrongByte() throws {
        let e = try Engine("race")
        let cache = try e.open()
        let pool = try BufferPool(bufferSize: (64 << 10) + 4096, count: 3)
        let state = ConditionLock()
        nonisolated(unsafe) var writing = true
        nonisolated(unsafe) var started = 0
        nonisolated(unsafe) var finished = 0
        nonisolated(unsafe) var hits = 0
        nonisolated(unsafe) var wrong = 0
        for reader in 0..<3 {
            try OSThread.spawn(name: "race-reader") {
                let slot = pool.acquire()!
                var n = 0
                var bad = 0
                var i = UInt64(reader + 1)
                state.withLock { started += 1; state.broadcast() }
                while state.withLock({ writing }) {
                    i = i &* 6364136223846793005 &+ 1442695040888963407
                    let b = (i >> 33) % 150
                    if case .hit(let len, _) = cache.read(key: e.key(b), id: e.key(b).id, into: slot) {
                        n += 1
                        let expected = SampleData.bytes(seed: b + 1, count: e.length(b))
                        if len != expected.count || memcmp(slot.base + BlockCache.dataOffset, expected, len) != 0 { bad += 1 }
                    }
                }
                pool.release(slot)
                state.withLock { hits += n; wrong += bad; finished += 1; state.broadcast() }
            }
        }
        state.withLock { while started < 3 { state.wait() } }
        for i in 0..<600 { try e.put(cache, UInt64(i % 150)) }
        state.withLock {
            writing = false
            while finished < 3 { state.wait() }
        }
        #expect(wrong == 0, "\(wrong) hits served wrong bytes")
        #expect(hits > 0)
        #expect(cache.diskStats[0].evictions > 0 && cache.diskStats[0].corrupt == 0)
    }

    /// A region made ready with kept blocks in it is the one state the snapshot has no field for:
    /// after a clean restart its blocks are walked back, the writer goes on through it, and its
    /// footer then lists them, so a crash restart finds them too.
    @Test func aReadyRegionWithKeptBlocksSurvivesCleanAndCrashRestarts() throws {
        let e = try Engine("ready-restart")
        do {
            let cache = try e.open()
            let disk = cache.cacheDisks[0]
            for i in 0..<3 { try e.put(cache, UInt64(i)) }
            for i in 0..<3 { #expect(e.check(cache, UInt64(i))) }  // read since written: kept
            var i: UInt64 = 3
            while !(disk.cleaner.readyRegions.first.map { $0.region == 0 && !$0.entries.isEmpty } ?? false) {
                try e.put(cache, i)
                i += 1
                cache.waitForBackgroundWork()
            }
            cache.close()
        }
        do {
            let cache = try e.open()
            #expect(cache.diskStats[0].recoveredFrom == "snapshot")
            let ready = cache.cacheDisks[0].cleaner.readyRegions
            #expect(ready.map(\.region) == [0] && ready.first?.entries.count == 3, "the kept blocks walked back")
            for h in 0..<3 { #expect(e.check(cache, UInt64(h)), "kept block \(h) lost in a clean restart") }
            for j in 0..<20 { try e.put(cache, 2000 + UInt64(j)) }
            cache.waitForBackgroundWork()
            // No close(): as after kill -9.
        }
        let cache = try e.open()
        #expect(cache.diskStats[0].recoveredFrom == "regions")
        for h in 0..<3 { #expect(e.check(cache, UInt64(h)), "kept block \(h) lost in a crash restart") }
        for j in 0..<20 { #expect(e.check(cache, 2000 + UInt64(j))) }
    }

    /// A crash while a ready region holds kept blocks: that region has the newest generation and
    /// becomes the active one; the region that was being written is walked, and writing on
    /// clobbers neither.
    @Test func aCrashWithKeptBlocksInTheReadyRegionLosesNothing() throws {
        let e = try Engine("ready-crash")
        var written: [UInt64] = []
        do {
            let cache = try e.open()
            let disk = cache.cacheDisks[0]
            for i in 0..<3 { try e.put(cache, UInt64(i)) }
            for i in 0..<3 { #expect(e.check(cache, UInt64(i))) }
            var i: UInt64 = 3
            while !(disk.cleaner.readyRegions.first.map { $0.region == 0 && !$0.entries.isEmpty } ?? false) {
                try e.put(cache, i)
                i += 1
                cache.waitForBackgroundWork()
            }
            // The blocks of the region being written at the crash.
            let active = disk.writer.active
            written = (3..<i).filter { b in
                guard let entry = disk.state.lock.withLock({ disk.state.index.lookup(e.key(b).id) }) else { return false }
                return disk.layout.region(ofPage: entry.page) == active.region
            }
            #expect(!written.isEmpty)
        }
        let cache = try e.open()
        #expect(cache.diskStats[0].recoveredFrom == "regions")
        #expect(cache.cacheDisks[0].writer.active.region == 0, "the ready region, newest, is written next")
        for h in 0..<3 { #expect(e.check(cache, UInt64(h)), "kept block \(h) lost") }
        for w in written { #expect(e.check(cache, w), "block \(w) of the region written at the crash lost") }
        for j in 0..<10 { try e.put(cache, 3000 + UInt64(j)) }
        for h in 0..<3 { #expect(e.check(cache, UInt64(h))) }
        for j in 0..<10 { #expect(e.check(cache, 3000 + UInt64(j))) }
    }
}

@Suite struct IndexTableTests {
    @Test func insertLookupRemoveAndGrowAgreeWithADictionary() {
        var table = IndexTable(expectedBlocks: 10)
        var model: [BlockID: IndexEntry] = [:]
        var rng = SystemRandomNumberGenerator()
        var ids: [BlockID] = []
        for step in 0..<20_000 {
            if ids.isEmpty || Bool.random(using: &rng) || step < 2000 {
                // Distinct tags (the high 32 bits), so the table and the model agree exactly.
                let id = BlockID(high: UInt64(step + 1) << 32 | UInt64.random(in: 0..<1000, using: &rng), low: UInt64.random(in: 0...UInt64.max, using: &rng))
                let e = IndexEntry(page: UInt32(step), pages: 3, flags: 0)
                table.insert(id, e)
                model[id] = e
                ids.append(id)
            } else {
                let id = ids.remove(at: Int.random(in: 0..<ids.count, using: &rng))
                let removed = table.remove(id)
                #expect(removed)
                model[id] = nil
            }
        }
        #expect(table.count == model.count)
        for (id, e) in model { #expect(table.lookup(id) == e) }
        #expect(Double(table.memoryBytes) / Double(table.count) < 32)
    }

    @Test func removeAllInPagesLeavesTheRest() {
        var table = IndexTable(expectedBlocks: 100)
        for i in 0..<100 { table.insert(BlockID(high: UInt64(i + 1) << 32, low: 0), IndexEntry(page: UInt32(i * 10), pages: 2, flags: 0)) }
        let removed = table.removeAll(inPages: 200..<500)
        #expect(removed == 30)
        #expect(table.count == 70)
        for i in 0..<100 {
            let present = table.lookup(BlockID(high: UInt64(i + 1) << 32, low: 0)) != nil
            #expect(present == !(20..<50).contains(i))
        }
    }
}

@Suite struct AdmissionTests {
    func id(_ i: UInt64) -> BlockID { BlockKey(object: ObjectRef(store: "d", bucket: "b", key: "k"), etag: "e", objectSize: 1 << 40, blockSize: 1 << 20, index: i).id }

    @Test func secondMissIsAdmittedFirstIsNot() {
        var c = AdmissionPolicy.Config()
        c.admitOnSecondMiss = true
        let p = AdmissionPolicy(config: c, capacity: 1 << 30, expectedBlocks: 1000)
        for i in 0..<100 { #expect(!p.admit(id(UInt64(i)), bytes: 4096)) }
        var admitted = 0
        for i in 0..<100 where p.admit(id(UInt64(i)), bytes: 4096) { admitted += 1 }
        #expect(admitted == 100)
        #expect(p.snapshot.refusedFirstMiss == 100 && p.snapshot.admitted == 100)
    }

    @Test func writeBudgetStopsWritesWhenSpent() {
        var c = AdmissionPolicy.Config()
        c.writeBudgetDWPD = 1
        let p = AdmissionPolicy(config: c, capacity: 10 << 20, expectedBlocks: 10)
        var admitted = 0
        for i in 0..<20 where p.admit(id(UInt64(i)), bytes: 1 << 20) { admitted += 1 }
        #expect(admitted == 10)
        #expect(p.snapshot.refusedBudget == 10)
        #expect(p.snapshot.budgetUsed > 0.99)
    }
}
