import ArgumentParser
import Logging
import ShoalCore
import ShoalStore
import ShoalIO
import ShoalSys

/// Engine-only figures: index DRAM per block, recovery time, hit read throughput, trace replays.
struct EngineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine", abstract: "Measure the cache engine alone (no network, no store): index DRAM, recovery, hit reads.")

    @Option(help: "Folder for the cache file (on the disk to measure).") var dir: String
    @Option(help: "Blocks to cache for the DRAM and recovery figures (small records of 8 KiB).") var blocks = 1_000_000
    @Option(help: "Data to cache for the hit-read figure, e.g. 1GiB.") var readSize = "1GiB"
    @Option(help: "Block size for the hit-read figure.") var blockSize = "4MiB"
    @Option(help: "Concurrent readers for the hit-read figure.") var queueDepth = 8
    @Option(help: "Seconds of hit reads.") var seconds = 3.0
    @Option(help: "Data to insert for the insert figure, into a cache half its size (eviction, hot re-appends).") var fillSize = "2GiB"
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        guard let readBytes = ByteSize.parse(readSize), let fillBytes = ByteSize.parse(fillSize), let bs = ByteSize.parse(blockSize), bs >= 4096,
              queueDepth >= 1 else {
            throw fail("--read-size, --fill-size and --block-size must be sizes; --queue-depth at least 1", code: 2)
        }
        var logger = Logger(label: "shoal.bench")
        logger.logLevel = .warning
        do {
            try FileSystem.createDirectories(dir)
            let (dram, clean, unclean) = try recovery(logger: logger)
            let rate = try hitReads(bytes: readBytes, blockSize: bs, logger: logger)
            let ins = try inserts(bytes: fillBytes, blockSize: bs, logger: logger)
            if json {
                print("{\"blocks\":\(blocks),\"indexBytesPerBlock\":\(formatFixed(dram, decimals: 2)),\"recoverCleanSeconds\":\(formatFixed(clean, decimals: 3)),"
                      + "\"recoverUncleanSeconds\":\(formatFixed(unclean, decimals: 3)),\"hitReadBytesPerSecond\":\(formatFixed(rate, decimals: 0)),"
                      + "\"insertBytesPerSecond\":\(formatFixed(ins.rate, decimals: 0)),\"insertP50Micros\":\(formatFixed(ins.p50, decimals: 1)),"
                      + "\"insertP99Micros\":\(formatFixed(ins.p99, decimals: 1)),\"boundaryInsertP50Micros\":\(formatFixed(ins.boundaryP50, decimals: 1)),"
                      + "\"boundaryInsertP99Micros\":\(formatFixed(ins.boundaryP99, decimals: 1)),"
                      + "\"boundaryInserts\":\(ins.boundaries),\"inserts\":\(ins.count),\"insertsDropped\":\(ins.dropped),"
                      + "\"queueDepth\":\(queueDepth),\"blockSize\":\(bs)}")
            } else {
                print("index DRAM per cached block: \(formatFixed(dram, decimals: 2)) bytes (\(blocks) blocks)")
                print("recovery of \(blocks) blocks after a clean stop (snapshot): \(formatFixed(clean, decimals: 3)) s")
                print("recovery of \(blocks) blocks after an unclean stop (footers; as after kill -9): \(formatFixed(unclean, decimals: 3)) s")
                print("hit reads, \(ByteSize.format(bs)) blocks, \(queueDepth) readers: \(ByteSize.formatRate(bytes: UInt64(rate), seconds: 1))")
                print("inserts, \(ByteSize.format(bs)) blocks, \(ins.count) into a cache half their size: \(ByteSize.formatRate(bytes: UInt64(ins.rate), seconds: 1)) "
                      + "(time inside insert), p50 \(formatFixed(ins.p50, decimals: 1)) µs, p99 \(formatFixed(ins.p99, decimals: 1)) µs; "
                      + "\(ins.boundaries) crossing a region boundary: p50 \(formatFixed(ins.boundaryP50, decimals: 1)) µs, p99 \(formatFixed(ins.boundaryP99, decimals: 1)) µs; \(ins.dropped) dropped")
            }
        } catch let e as ShoalError {
            throw fail(e.message)
        }
    }

    /// Caches `blocks` small records, then times a reopen from the snapshot and one from footers.
    func recovery(logger: Logger) throws -> (Double, Double, Double) {
        let path = dir + "/recovery"
        try? FileSystem.createDirectories(path)
        FileSystem.remove(path + "/shoal-cache.dat")
        FileSystem.remove(path + "/shoal-index.snap")
        // Room for the blocks (whole regions, less their footer reserves), the superblock area and
        // the clean region the cleaner keeps ready ahead of the writer.
        let regionSize: UInt64 = 256 << 20
        let perRegion = (regionSize - UInt64(CacheFormatInfo.footerReserve(regionSize: regionSize))) / 8192
        let capacity = CacheFormatInfo.dataStart + ((UInt64(blocks) + perRegion - 1) / perRegion + 1) * regionSize
        let config = CacheDiskConfig(path: path, capacity: capacity, regionSize: regionSize)
        let pool = try BufferPool(bufferSize: 8192, count: 1)
        let slot = pool.acquire()!
        let object = ObjectRef(store: "default", bucket: "bench", key: "recovery")
        var dram = 0.0
        do {
            let cache = try BlockCache(disks: [config], expectedBlockSize: 4096, logger: logger)
            SampleData.fill(UnsafeMutableRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: 4096), seed: 1)
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: 4096))
            for i in 0..<blocks {
                // 4 KiB blocks of one large object: small records, so a million fit a small file.
                let key = BlockKey(object: object, etag: "e", objectSize: 1 << 40, blockSize: 4096, index: UInt64(i))
                try cache.insert(key: key, id: key.id, slot: slot, length: 4096, crc: crc)
            }
            let s = cache.diskStats[0]
            dram = Double(s.indexBytes) / Double(max(s.blocks, 1))
            guard s.blocks == blocks else {
                throw ShoalError(.internal, "only \(s.blocks) of \(blocks) blocks are indexed (\(s.evictions) evicted, \(s.insertsDropped) inserts dropped)")
            }
            cache.close()
        }
        var start = monotonicNanos()
        let fromSnapshot = try BlockCache(disks: [config], expectedBlockSize: 4096, logger: logger)
        let clean = Double(monotonicNanos() - start) / 1e9
        guard fromSnapshot.blockCount == blocks else { throw ShoalError(.internal, "snapshot recovered \(fromSnapshot.blockCount) of \(blocks) blocks") }
        // No close(): the next open has no snapshot, as after kill -9.
        start = monotonicNanos()
        let fromFooters = try BlockCache(disks: [config], expectedBlockSize: 4096, logger: logger)
        let unclean = Double(monotonicNanos() - start) / 1e9
        guard fromFooters.blockCount == blocks else { throw ShoalError(.internal, "footers recovered \(fromFooters.blockCount) of \(blocks) blocks") }
        FileSystem.remove(path + "/shoal-cache.dat")
        return (dram, clean, unclean)
    }

    /// Caches `bytes` of `blockSize` blocks, then reads them back through the engine with
    /// `queueDepth` threads (each its own registered buffer) for `seconds`.
    func hitReads(bytes: UInt64, blockSize: UInt64, logger: Logger) throws -> Double {
        let path = dir + "/hits"
        try? FileSystem.createDirectories(path)
        FileSystem.remove(path + "/shoal-index.snap")
        let count = Int(bytes / blockSize)
        let config = CacheDiskConfig(path: path, capacity: bytes * 2 + (512 << 20), regionSize: max(256 << 20, blockSize * 4))
        let cache = try BlockCache(disks: [config], expectedBlockSize: blockSize, logger: logger)
        let pool = try BufferPool(bufferSize: Int(blockSize) + BlockCache.dataOffset, count: queueDepth)
        let object = ObjectRef(store: "default", bucket: "bench", key: "hits")
        let keys = (0..<count).map {
            BlockKey(object: object, etag: "e", objectSize: UInt64(count) * blockSize, blockSize: UInt32(blockSize), index: UInt64($0))
        }
        let first = pool.acquire()!
        for k in keys {
            SampleData.fill(UnsafeMutableRawBufferPointer(start: first.base + BlockCache.dataOffset, count: Int(blockSize)), seed: k.index)
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: first.base + BlockCache.dataOffset, count: Int(blockSize)))
            try cache.insert(key: k, id: k.id, slot: first, length: Int(blockSize), crc: crc)
        }
        pool.release(first)
        let done = ConditionLock()
        nonisolated(unsafe) var total: UInt64 = 0
        nonisolated(unsafe) var finished = 0
        nonisolated(unsafe) var bad = 0
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        let start = monotonicNanos()
        for t in 0..<queueDepth {
            let ids = keys.map(\.id)
            try OSThread.spawn(name: "bench-hit") {
                let slot = pool.acquire()!
                var n: UInt64 = 0
                var i = t
                var misses = 0
                while monotonicNanos() < deadline {
                    if case .hit(let len, _) = cache.read(key: keys[i % count], id: ids[i % count], into: slot) { n += UInt64(len) } else { misses += 1 }
                    i += queueDepth
                }
                pool.release(slot)
                done.withLock { total += n; finished += 1; bad += misses }
                done.broadcast()
            }
        }
        done.lock()
        while finished < queueDepth { done.wait() }
        done.unlock()
        let elapsed = Double(monotonicNanos() - start) / 1e9
        FileSystem.remove(path + "/shoal-cache.dat")
        guard bad == 0 else { throw ShoalError(.internal, "\(bad) hit reads missed") }
        return Double(total) / elapsed
    }
}

extension EngineBench {
    struct InsertFigures {
        var rate = 0.0
        var p50 = 0.0
        var p99 = 0.0
        var boundaryP50 = 0.0
        var boundaryP99 = 0.0
        var boundaries = 0
        var count = 0
        var dropped = 0
    }

    /// Inserts `bytes` of `blockSize` blocks, one thread, into a cache half that size in regions
    /// of four blocks, reading every fourth block back once so eviction has hot blocks to
    /// re-append. Times each insert call alone; an insert that moved the log to another region
    /// (the disk's region switch count changed) is a boundary insert.
    func inserts(bytes: UInt64, blockSize: UInt64, logger: Logger) throws -> InsertFigures {
        let path = dir + "/inserts"
        try? FileSystem.createDirectories(path)
        FileSystem.remove(path + "/shoal-index.snap")
        let count = Int(bytes / blockSize)
        let regionSize = max(16 << 20, blockSize * 4)
        let config = CacheDiskConfig(path: path, capacity: CacheFormatInfo.dataStart + max(bytes / 2 / regionSize, 4) * regionSize, regionSize: regionSize)
        let cache = try BlockCache(disks: [config], expectedBlockSize: blockSize, logger: logger)
        let pool = try BufferPool(bufferSize: Int(blockSize) + BlockCache.dataOffset, count: 2)
        let slot = pool.acquire()!
        let reader = pool.acquire()!
        let object = ObjectRef(store: "default", bucket: "bench", key: "inserts")
        SampleData.fill(UnsafeMutableRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: Int(blockSize)), seed: 7)
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: Int(blockSize)))
        var all: [Double] = []
        var boundary: [Double] = []
        var total: UInt64 = 0
        var dropped = 0
        for i in 0..<count {
            let key = BlockKey(object: object, etag: "e", objectSize: UInt64(count) * blockSize, blockSize: UInt32(blockSize), index: UInt64(i))
            let switches = cache.diskStats[0].regionSwitches
            let start = monotonicNanos()
            try cache.insert(key: key, id: key.id, slot: slot, length: Int(blockSize), crc: crc)
            let nanos = monotonicNanos() - start
            total += nanos
            all.append(Double(nanos) / 1e3)
            if cache.diskStats[0].regionSwitches != switches { boundary.append(Double(nanos) / 1e3) }
            if !cache.contains(key.id) { dropped += 1 }
            if i % 4 == 0 { _ = cache.read(key: key, id: key.id, into: reader) }
        }
        cache.close()
        FileSystem.remove(path + "/shoal-cache.dat")
        FileSystem.remove(path + "/shoal-index.snap")
        func pct(_ xs: [Double], _ q: Double) -> Double {
            guard !xs.isEmpty else { return 0 }
            let s = xs.sorted()
            return s[min(s.count - 1, Int(Double(s.count) * q))]
        }
        return InsertFigures(rate: Double(UInt64(count) * blockSize) / (Double(total) / 1e9), p50: pct(all, 0.5), p99: pct(all, 0.99),
                             boundaryP50: pct(boundary, 0.5), boundaryP99: pct(boundary, 0.99), boundaries: boundary.count, count: count, dropped: dropped)
    }
}

/// Replays synthetic traces through the real engine (small records) beside an LRU of the same
/// capacity: miss ratio and bytes written to flash.
struct ReplayBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay", abstract: "Replay shuffled-epoch and multi-tenant traces through the engine beside LRU.")

    @Option(help: "Folder for the cache file.") var dir: String
    @Option(help: "Blocks in the single dataset.") var datasetBlocks = 4096
    @Option(help: "Epochs of the shuffled-epoch trace.") var epochs = 5
    @Flag(help: "Print JSON lines.") var json = false

    struct Outcome {
        var misses = 0
        var requests = 0
        var written: UInt64 = 0
        var ratio: Double { Double(misses) / Double(max(requests, 1)) }
    }

    func run() throws {
        var logger = Logger(label: "shoal.bench")
        logger.logLevel = .warning
        var rng = SplitMix(seed: 42)
        do {
            try FileSystem.createDirectories(dir)
            // One dataset read in a new random order every epoch.
            var epochTrace: [(Int, Int)] = []
            for _ in 0..<epochs {
                var order = Array(0..<datasetBlocks)
                for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
                epochTrace += order.map { (0, $0) }
            }
            for fraction in [0.25, 0.5, 0.75] {
                let slots = Int(Double(datasetBlocks) * fraction)
                try report("shuffled-epochs cache=\(formatFixed(fraction, decimals: 2))", trace: epochTrace, slots: slots, logger: logger)
            }
            // Many datasets of different sizes; which dataset is read follows Zipf(1.0).
            let sizes = (0..<20).map { _ in 100 + Int(rng.next() % 500) }
            let weights = (1...sizes.count).map { 1.0 / Double($0) }
            let totalWeight = weights.reduce(0, +)
            var tenantTrace: [(Int, Int)] = []
            for _ in 0..<(sizes.reduce(0, +) * epochs) {
                var u = Double(rng.next() % 1_000_000) / 1_000_000 * totalWeight
                var d = 0
                while d < sizes.count - 1 && u > weights[d] { u -= weights[d]; d += 1 }
                tenantTrace.append((d, Int(rng.next() % UInt64(sizes[d]))))
            }
            let all = sizes.reduce(0, +)
            for fraction in [0.1, 0.25, 0.5] {
                try report("multi-tenant-zipf cache=\(formatFixed(fraction, decimals: 2))", trace: tenantTrace, slots: Int(Double(all) * fraction), logger: logger)
            }
        } catch let e as ShoalError {
            throw fail(e.message)
        }
    }

    func report(_ name: String, trace: [(Int, Int)], slots: Int, logger: Logger) throws {
        let engine = try replayEngine(trace, slots: slots, logger: logger)
        let guarded = try replayEngine(trace, slots: slots, thrashGuard: true, logger: logger)
        let lru = replayLRU(trace, slots: slots)
        if json {
            print("{\"trace\":\"\(name)\",\"engineMissRatio\":\(formatFixed(engine.ratio, decimals: 4)),\"guardedMissRatio\":\(formatFixed(guarded.ratio, decimals: 4)),"
                  + "\"lruMissRatio\":\(formatFixed(lru.ratio, decimals: 4)),\"engineBlocksWritten\":\(engine.written / 8192),"
                  + "\"guardedBlocksWritten\":\(guarded.written / 8192),\"lruBlocksWritten\":\(lru.written / 8192)}")
        } else {
            print("\(name): engine miss \(formatFixed(engine.ratio, decimals: 3)) (\(engine.written / 8192) blocks written) | "
                  + "with thrash guard \(formatFixed(guarded.ratio, decimals: 3)) (\(guarded.written / 8192)) | "
                  + "LRU \(formatFixed(lru.ratio, decimals: 3)) (\(lru.written / 8192))")
        }
    }

    /// The engine with room for about `slots` 8 KiB records (regions of 1 MiB, 127 records each).
    /// With `thrashGuard`, a dataset larger than the cache admits only a stable subset of its
    /// blocks (90% of the cache's worth), as the worker's `thrashGuard` does.
    func replayEngine(_ trace: [(Int, Int)], slots: Int, thrashGuard: Bool = false, logger: Logger) throws -> Outcome {
        var fractions: [Int: Double] = [:]
        if thrashGuard {
            var sizes: [Int: Set<Int>] = [:]
            for (d, b) in trace { sizes[d, default: []].insert(b) }
            for (d, blocks) in sizes { fractions[d] = AdmissionPolicy.subsetFraction(datasetBlocks: blocks.count, cacheBlocks: slots) }
        }
        let admission = AdmissionPolicy(config: AdmissionPolicy.Config(), capacity: UInt64(slots) * 8192, expectedBlocks: slots)
        let path = dir + "/replay"
        try? FileSystem.createDirectories(path)
        FileSystem.remove(path + "/shoal-cache.dat")
        FileSystem.remove(path + "/shoal-index.snap")
        let perRegion = 127
        let regions = max(2, (slots + perRegion - 1) / perRegion)
        let cache = try BlockCache(disks: [CacheDiskConfig(path: path, capacity: UInt64(regions) << 20, regionSize: 1 << 20)],
                                   expectedBlockSize: 4096, logger: logger)
        let pool = try BufferPool(bufferSize: 8192, count: 1)
        let slot = pool.acquire()!
        var out = Outcome()
        for (dataset, block) in trace {
            let key = BlockKey(object: ObjectRef(store: "default", bucket: "replay", key: "ds\(dataset)"), etag: "e", objectSize: 1 << 40, blockSize: 4096, index: UInt64(block))
            out.requests += 1
            if case .hit = cache.read(key: key, id: key.id, into: slot) { continue }
            out.misses += 1
            guard admission.admit(key.id, bytes: 8192, subsetFraction: fractions[dataset] ?? 1) else { continue }
            SampleData.fill(UnsafeMutableRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: 4096), seed: UInt64(block))
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: 4096))
            try cache.insert(key: key, id: key.id, slot: slot, length: 4096, crc: crc)
        }
        out.written = cache.diskStats[0].bytesWritten
        FileSystem.remove(path + "/shoal-cache.dat")
        return out
    }

    func replayLRU(_ trace: [(Int, Int)], slots: Int) -> Outcome {
        var out = Outcome()
        var stamp: [Int: Int] = [:]
        var order: [Int: Int] = [:]  // stamp -> key, for eviction of the oldest
        var oldest = 0
        var clock = 0
        for (dataset, block) in trace {
            let key = dataset << 32 | block
            out.requests += 1
            clock += 1
            if let s = stamp[key] {
                order[s] = nil
            } else {
                out.misses += 1
                out.written += 8192
                if stamp.count >= slots {
                    while order[oldest] == nil { oldest += 1 }
                    stamp[order[oldest]!] = nil
                    order[oldest] = nil
                }
            }
            stamp[key] = clock
            order[clock] = key
        }
        return out
    }
}
