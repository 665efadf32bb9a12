import Testing
import ShoalCore
@testable import ShoalStore
import ShoalTestSupport

/// The read plan and its checks without a disk: records are built in memory and fed to `complete`.
@Suite struct ReadPlanTests {
    static let blockSize = 256 << 10
    let object = ObjectRef(store: "default", bucket: "b", key: "plan")

    /// Block 0 of a large object: `blockSize` bytes.
    func key(etag: String = "e") -> BlockKey {
        BlockKey(object: object, etag: etag, objectSize: 1 << 30, blockSize: UInt32(Self.blockSize), index: 0)
    }

    var pages: UInt16 { UInt16(CacheFormat.recordLength(dataLength: Self.blockSize) / 4096) }

    /// A buffer holding the record of `key` as the disk would: header (of `generation`, saying
    /// `length` bytes) then the data.
    func record(_ key: BlockKey, generation: UInt64 = 5, length: Int = blockSize) -> UnsafeMutableRawPointer {
        let count = CacheFormat.recordLength(dataLength: Self.blockSize)
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        CacheFormat.memsetZero(p, count)
        let data = UnsafeMutableRawBufferPointer(start: p + CacheFormat.headerSize, count: length)
        SampleData.fill(data, seed: 9)
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(data))
        CacheFormat.writeHeader(into: p, key: key.encoded, generation: generation, dataLength: UInt32(length), dataCRC: crc,
                                chunkCRCs: CacheFormat.chunkCRCs(UnsafeRawBufferPointer(data)))
        return p
    }

    func wholePlan() throws -> ReadPlan {
        try #require(ReadPlan(page: 7, pages: pages, generation: 5, range: nil, capacity: 1 << 20))
    }

    @Test func aWholeReadIsOneReadOfTheRecord() throws {
        let plan = try wholePlan()
        #expect(plan.first == PlannedRead(fileOffset: CacheFormat.dataStart + 7 * 4096, count: Int(pages) * 4096, bufferOffset: 0))
        #expect(plan.second == nil)
        #expect(ReadPlan(page: 7, pages: pages, generation: 5, range: nil, capacity: 64 << 10) == nil, "a record larger than the buffer")
    }

    @Test func aGoodRecordIsAHit() throws {
        let p = record(key())
        defer { p.deallocate() }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: p + CacheFormat.headerSize, count: Self.blockSize))
        #expect(try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) == .hit(length: Self.blockSize, crc: crc, header: nil))
    }

    @Test func aFlippedDataByteIsCorrupt() throws {
        let p = record(key())
        defer { p.deallocate() }
        (p + CacheFormat.headerSize + 1234).storeBytes(of: p.load(fromByteOffset: CacheFormat.headerSize + 1234, as: UInt8.self) ^ 0x10, as: UInt8.self)
        guard case .corrupt(let reason) = try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) else {
            Issue.record("a flipped byte was not caught"); return
        }
        #expect(reason.contains("CRC32C"))
    }

    @Test func aFlippedHeaderByteIsCorrupt() throws {
        let p = record(key())
        defer { p.deallocate() }
        (p + 40).storeBytes(of: p.load(fromByteOffset: 40, as: UInt8.self) ^ 1, as: UInt8.self)
        #expect(try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) == .corrupt(reason: "record header unreadable"))
    }

    @Test func anotherGenerationIsAMiss() throws {
        let p = record(key(), generation: 4)
        defer { p.deallocate() }
        #expect(try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) == .miss, "a record of an older generation")
        let q = record(key())
        defer { q.deallocate() }
        #expect(try wholePlan().complete(q, readComplete: true, key: key(), generationNow: 6) == .miss, "the region was reused during the read")
    }

    @Test func anotherKeyIsAMiss() throws {
        let p = record(key(etag: "other"))
        defer { p.deallocate() }
        #expect(try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) == .miss)
    }

    @Test func aLengthTheKeyDoesNotImplyIsCorrupt() throws {
        let p = record(key(), length: Self.blockSize - 4096)
        defer { p.deallocate() }
        guard case .corrupt(let reason) = try wholePlan().complete(p, readComplete: true, key: key(), generationNow: 5) else {
            Issue.record("a record of the wrong length was served"); return
        }
        #expect(reason.contains("its key implies"))
    }

    @Test func aShortReadIsNeverServed() throws {
        let p = record(key())
        defer { p.deallocate() }
        guard case .corrupt = try wholePlan().complete(p, readComplete: false, key: key(), generationNow: 5) else {
            Issue.record("a short read was served"); return
        }
    }

    /// A small range reads the header and the chunks that cover it; only those chunks are checked,
    /// and the header comes back to be kept, so the next plan reads the chunks alone.
    @Test func aRangedReadChecksOnlyItsChunks() throws {
        let range = 20_000..<20_100  // in chunk 1 (16 KiB chunks)
        let plan = try #require(ReadPlan(page: 7, pages: pages, generation: 5, range: range, capacity: 1 << 20))
        #expect(plan.chunkBytes == 16384..<32768)
        #expect(plan.first.count == CacheFormat.headerSize)
        #expect(plan.second == PlannedRead(fileOffset: CacheFormat.dataStart + 7 * 4096 + 4096 + 16384, count: 16384, bufferOffset: 4096 + 16384))
        let p = record(key())
        defer { p.deallocate() }
        guard case .hit(let length, _, let header?) = plan.complete(p, readComplete: true, key: key(), generationNow: 5) else {
            Issue.record("the ranged read missed"); return
        }
        #expect(length == Self.blockSize)
        // A byte flipped outside the chunk read does not matter; one inside does.
        (p + CacheFormat.headerSize + 100).storeBytes(of: 0xAB, as: UInt8.self)
        let cached = try #require(ReadPlan(page: 7, pages: pages, generation: 5, range: range, capacity: 1 << 20, knownHeader: header))
        #expect(cached.second == nil && cached.first == plan.second, "with the header known, only the chunk is read")
        guard case .hit = cached.complete(p, readComplete: true, key: key(), generationNow: 5) else { Issue.record("clean chunk missed"); return }
        (p + CacheFormat.headerSize + 20_050).storeBytes(of: p.load(fromByteOffset: CacheFormat.headerSize + 20_050, as: UInt8.self) ^ 0x80, as: UInt8.self)
        guard case .corrupt = cached.complete(p, readComplete: true, key: key(), generationNow: 5) else { Issue.record("bad chunk served"); return }
        #expect(cached.complete(p, readComplete: true, key: key(etag: "other"), generationNow: 5) == .miss, "a known header of another key")
    }
}
