import Glibc
import Testing
import ShoalCore
@testable import ShoalStore
import ShoalIO
import ShoalSys
import ShoalTestSupport

@Suite struct BlockCacheTests {
    let object = ObjectRef(store: "default", bucket: "b", key: "k")

    /// Block `i` of an object version whose block `i` is the last, `length` bytes long.
    func key(_ i: UInt64, etag: String = "e", length: Int = 1 << 20) -> BlockKey {
        BlockKey(object: object, etag: etag, objectSize: i * (1 << 20) + UInt64(length), blockSize: 1 << 20, index: i)
    }

    /// Fills `slot` with block `i`'s bytes and inserts it.
    func put(_ cache: BlockCache, _ slot: IOSlot, _ i: UInt64, length: Int = 1 << 20) throws {
        let data = UnsafeMutableRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: length)
        SampleData.fill(data, seed: i + 1)
        try cache.insert(key: key(i, length: length), id: key(i, length: length).id, slot: slot, length: length, crc: CRC32C.checksum(UnsafeRawBufferPointer(data)))
    }

    func expectBlock(_ cache: BlockCache, _ slot: IOSlot, _ i: UInt64, length: Int = 1 << 20) {
        guard case .hit(let n, _) = cache.read(key: key(i, length: length), id: key(i, length: length).id, into: slot) else {
            Issue.record("block \(i) missing"); return
        }
        #expect(n == length)
        let expected = SampleData.bytes(seed: i + 1, count: length)
        #expect(memcmp(slot.base + BlockCache.dataOffset, expected, length) == 0)
    }

    /// All blocks in the first region (the case a fresh file's generation numbering once lost).
    @Test func restartWithOnlyTheFirstRegionWritten() throws {
        let dir = makeTemporaryDirectory("first-region")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        do {
            let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 64 << 20, regionSize: 8 << 20)], logger: testLogger)
            for i in 0..<3 { try put(cache, slot, UInt64(i)) }
        }
        let reopened = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 64 << 20, regionSize: 8 << 20)], logger: testLogger)
        #expect(reopened.blockCount == 3)
        for i in 0..<3 { expectBlock(reopened, slot, UInt64(i)) }
    }

    @Test func insertReadAndSurviveRestart() throws {
        let dir = makeTemporaryDirectory("cache")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        do {
            let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 32 << 20, regionSize: 4 << 20)], logger: testLogger)
            for i in 0..<5 { try put(cache, slot, UInt64(i), length: i == 4 ? 12345 : 1 << 20) }
            expectBlock(cache, slot, 2)
            #expect(cache.read(key: key(2, etag: "other"), id: key(2, etag: "other").id, into: slot) == .miss)
        }
        let reopened = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 32 << 20, regionSize: 4 << 20)], logger: testLogger)
        #expect(reopened.blockCount == 5)
        for i in 0..<4 { expectBlock(reopened, slot, UInt64(i)) }
        expectBlock(reopened, slot, 4, length: 12345)
        // New writes after recovery go on without clobbering the recovered blocks.
        try put(reopened, slot, 10)
        expectBlock(reopened, slot, 0)
        expectBlock(reopened, slot, 10)
    }

    @Test func flippedByteIsDetectedAndNeverServed() throws {
        let dir = makeTemporaryDirectory("corrupt")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20)], logger: testLogger)
        try put(cache, slot, 0)
        try flipByte(path: cache.filePaths[0], at: CacheFormat.dataStart + 4096 + 777)
        guard case .corrupt = cache.read(key: key(0), id: key(0).id, into: slot) else { Issue.record("bad block served"); return }
        #expect(cache.read(key: key(0), id: key(0).id, into: slot) == .miss)
        #expect(cache.blockCount == 0)
    }

    /// A small read checks only its chunks: right bytes from any offset (last chunk short, range
    /// across a chunk edge), and a flipped byte in a chunk it reads is caught.
    @Test func rangedReadsCheckTheirChunks() throws {
        let dir = makeTemporaryDirectory("ranged")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20)], logger: testLogger)
        let length = (1 << 20) - 1000
        try put(cache, slot, 0, length: length)
        let expected = SampleData.bytes(seed: 1, count: length)
        for range in [0..<4096, 16380..<16400, 500_000..<565_536, (length - 10)..<length, 1..<2] {
            memset(slot.base + BlockCache.dataOffset, 0, 1 << 20)
            guard case .hit(let n, _) = cache.read(key: key(0, length: length), id: key(0, length: length).id, into: slot, range: range) else {
                Issue.record("range \(range) missed"); return
            }
            #expect(n == length)
            let got = Array(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset + range.lowerBound, count: range.count))
            #expect(got == Array(expected[range]), "range \(range)")
        }
        // Chunk 20 (16 KiB chunks) holds byte 20 × 16384 + 5: a read of another chunk still
        // hits; a read of chunk 20 is refused and drops the block.
        try flipByte(path: cache.filePaths[0], at: CacheFormat.dataStart + 4096 + 20 * 16384 + 5)
        guard case .hit = cache.read(key: key(0, length: length), id: key(0, length: length).id, into: slot, range: 0..<4096) else { Issue.record("clean chunk missed"); return }
        guard case .corrupt = cache.read(key: key(0, length: length), id: key(0, length: length).id, into: slot, range: (20 * 16384)..<(20 * 16384 + 100)) else {
            Issue.record("bad chunk served"); return
        }
        #expect(cache.blockCount == 0)
    }

    /// The read in steps, as an io_uring shard would run it: plan, its reads submitted by the
    /// caller, then complete on the buffer. Whole and ranged, and a flipped byte is caught.
    @Test func aPlanReadByTheCallerCompletesAsARead() throws {
        let dir = makeTemporaryDirectory("plan")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20)], logger: testLogger)
        try put(cache, slot, 3)
        func readInSteps(range: Range<Int>?) throws -> CacheRead {
            let plan = try #require(cache.plan(id: key(3).id, range: range, capacity: slot.capacity))
            let file = cache.file(for: plan)
            var complete = try slot.read(file: file, at: plan.first.fileOffset, count: plan.first.count, bufferOffset: plan.first.bufferOffset) == plan.first.count
            if let second = plan.second {
                complete = try complete && slot.read(file: file, at: second.fileOffset, count: second.count, bufferOffset: second.bufferOffset) == second.count
            }
            return cache.complete(plan, key: key(3), id: key(3).id, buffer: slot.base, readComplete: complete)
        }
        let expected = SampleData.bytes(seed: 4, count: 1 << 20)
        guard case .hit(let n, _) = try readInSteps(range: nil) else { Issue.record("whole read missed"); return }
        #expect(n == 1 << 20 && memcmp(slot.base + BlockCache.dataOffset, expected, n) == 0)
        memset(slot.base + BlockCache.dataOffset, 0, 1 << 20)
        guard case .hit = try readInSteps(range: 70_000..<70_100) else { Issue.record("ranged read missed"); return }
        #expect(Array(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset + 70_000, count: 100)) == Array(expected[70_000..<70_100]))
        try flipByte(path: cache.filePaths[0], at: CacheFormat.dataStart + 4096 + 70_050)
        guard case .corrupt = try readInSteps(range: 70_000..<70_100) else { Issue.record("bad chunk served"); return }
        #expect(cache.plan(id: key(3).id, capacity: slot.capacity) == nil, "a bad block leaves the index")
    }

    @Test func neverGrowsPastItsCapacityAndEvictsOldestFirst() throws {
        let dir = makeTemporaryDirectory("cap")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        let capacity: UInt64 = 16 << 20
        var config = CacheDiskConfig(path: dir, capacity: capacity, regionSize: 4 << 20)
        config.cleanRegionWaitSeconds = 30  // every insert lands, however loaded the machine
        let cache = try BlockCache(disks: [config], logger: testLogger)
        for i in 0..<60 {
            try put(cache, slot, UInt64(i))
            #expect(cache.bytesCached <= capacity)
        }
        #expect(FileSystem.info(cache.filePaths[0])!.size <= capacity)
        #expect(!cache.contains(key(0).id))
        expectBlock(cache, slot, 59)
    }

    @Test func refusesAFolderThatWouldFillItsFilesystemOrSitsOnRootWhenForbidden() throws {
        let dir = makeTemporaryDirectory("floor")
        var c = CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20)
        c.minFreeSpace = 1 << 60
        #expect { try BlockCache(disks: [c], logger: testLogger) } throws: {
            let m = ($0 as? ShoalError)?.message ?? ""
            return m.contains(dir) && m.contains("minFreeSpace")
        }
        var r = CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20)
        r.allowRootFilesystem = false
        let onRoot = try FileSystem.deviceID(dir) == FileSystem.deviceID("/")
        if onRoot {
            #expect { try BlockCache(disks: [r], logger: testLogger) } throws: { ($0 as? ShoalError)?.message.contains("root filesystem") == true }
        } else {
            #expect(throws: Never.self) { try BlockCache(disks: [r], logger: testLogger) }
        }
    }

    @Test func refusesMissingFolderWithItsName() {
        #expect {
            try BlockCache(disks: [CacheDiskConfig(path: "/nonexistent-shoal-dir", capacity: 16 << 20, regionSize: 4 << 20)], logger: testLogger)
        } throws: { ($0 as? ShoalError)?.message.contains("/nonexistent-shoal-dir") == true }
    }

    @Test func theCacheFileIsNoLargerThanItsCapacity() throws {
        let dir = makeTemporaryDirectory("cap48")
        let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 48 << 20, regionSize: 8 << 20)], logger: testLogger)
        let size = try #require(FileSystem.info(cache.filePaths[0])?.size)
        #expect(size <= 48 << 20)
        #expect(size == CacheFormat.dataStart + 5 * (8 << 20), "the superblock area and as many whole regions as fit")
    }

    /// A file laid out when the superblock area came on top of the capacity has one region
    /// more than the capacity now allows: it is shrunk, and the blocks in the regions kept stay.
    @Test func aFileWithMoreRegionsThanTheCapacityKeepsItsBlocks() throws {
        let dir = makeTemporaryDirectory("shrink")
        let pool = try BufferPool(bufferSize: (1 << 20) + 4096, count: 1)
        let slot = try #require(pool.acquire())
        do {
            let old = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 49 << 20, regionSize: 8 << 20)], logger: testLogger)
            for i in 0..<4 { try put(old, slot, UInt64(i)) }
            old.close()
        }
        let cache = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 48 << 20, regionSize: 8 << 20)], logger: testLogger)
        #expect(FileSystem.info(cache.filePaths[0])!.size <= 48 << 20)
        for i in 0..<4 { expectBlock(cache, slot, UInt64(i)) }
        cache.close()
        // And it starts from the rewritten superblock the next time.
        let again = try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 48 << 20, regionSize: 8 << 20)], logger: testLogger)
        for i in 0..<4 { expectBlock(again, slot, UInt64(i)) }
    }

    @Test func aCapacityTheDiskCannotHoldNamesTheKeyTheValueAndWhatFits() {
        let dir = makeTemporaryDirectory("huge")
        #expect {
            try BlockCache(disks: [CacheDiskConfig(path: dir, capacity: 16 << 20, regionSize: 4 << 20),
                                   CacheDiskConfig(path: makeTemporaryDirectory("huge2"), capacity: 15 << 40, regionSize: 8 << 20)], logger: testLogger)
        } throws: {
            let m = ($0 as? ShoalError)?.message ?? ""
            return m.contains("caches[1].capacity") && m.contains("15 TiB") && m.contains("free") && m.contains("at most")
        }
    }
}
