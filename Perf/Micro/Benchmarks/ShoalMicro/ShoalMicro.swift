import Benchmark
import ShoalCore
import ShoalStore
import ShoalSys

/// The hot parts of a request, each alone: the wire codec, placement, the index, CRC32C and the
/// buffer pool. Each benchmark does `scaledIterations` operations per measured iteration.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], scalingFactor: .kilo,
                                           maxDuration: .seconds(2), maxIterations: 100_000)

    let object = ObjectRef(store: "default", bucket: "datasets", key: "imagenet/train/shard-000123.tar")
    let key = BlockKey(object: object, etag: "\"9b2cf535f27731c974343645a3985328\"", objectSize: 1 << 30, blockSize: 4 << 20, index: 17)
    let request = ReadRequest(block: key, offset: 65536, length: 4096)
    let encoded = request.encoded

    Benchmark("wire: encode READ + frame header") { benchmark in
        for _ in benchmark.scaledIterations {
            let body = request.encoded
            blackHole(FrameHeader(type: .read, requestID: 7, payloadLength: UInt32(body.count)).bytes + body)
        }
    }
    Benchmark("wire: decode READ") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(ReadRequest(decoding: encoded)) }
    }
    Benchmark("block ID: MurmurHash3-128 of the block key") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(key.id) }
    }

    let members = (0..<64).map { Member(id: "w\($0)", address: "10.0.\($0 / 16).\($0 % 16):7070") }
    let table = Placement(view: try! MembershipView(epoch: 1, members: members))
    let ids = (0..<4096).map { BlockKey(object: object, etag: "e", objectSize: 1 << 40, blockSize: 4 << 20, index: UInt64($0)).id }
    Benchmark("placement: owner and fallback of a block among 64 workers (slot table)") { benchmark in
        for i in benchmark.scaledIterations { blackHole(table.owners(of: ids[i % ids.count])) }
    }

    let many = (0..<1_000_000).map { BlockID(high: UInt64($0) &* 0x9E37_79B9_7F4A_7C15, low: UInt64($0)) }
    Benchmark("index: insert 1M blocks", configuration: .init(scalingFactor: .one)) { benchmark in
        var index = IndexTable(expectedBlocks: many.count)
        benchmark.startMeasurement()
        for (i, id) in many.enumerated() { index.insert(id, IndexEntry(page: UInt32(i), pages: 1025, flags: 0)) }
        benchmark.stopMeasurement()
        blackHole(index.count)
    }
    var full = IndexTable(expectedBlocks: many.count)
    for (i, id) in many.enumerated() { full.insert(id, IndexEntry(page: UInt32(i), pages: 1025, flags: 0)) }
    let index = full
    Benchmark("index: lookup among 1M blocks") { benchmark in
        for i in benchmark.scaledIterations { blackHole(index.lookup(many[(i &* 7919) % many.count])) }
    }

    let small = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
    SampleData.fill(small, seed: 1)
    SampleData.fill(block, seed: 2)
    Benchmark("CRC32C: 4 KiB") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(CRC32C.checksum(UnsafeRawBufferPointer(small))) }
    }
    Benchmark("CRC32C: 4 MiB", configuration: .init(scalingFactor: .one)) { benchmark in
        for _ in benchmark.scaledIterations { blackHole(CRC32C.checksum(UnsafeRawBufferPointer(block))) }
    }

    Benchmark("buffer pool: acquire + release") { benchmark in
        guard let pool = try? BufferPool(bufferSize: 64 << 10, count: 8) else { return }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            if let slot = pool.acquire() { pool.release(slot) }
        }
        benchmark.stopMeasurement()
    }
}
