import Logging
import ShoalCore
import ShoalIO
import ShoalSys

/// Layout figures of the on-disk format, for tools that size caches.
public enum CacheFormatInfo {
    /// Bytes at the end of each region reserved for its footer.
    public static func footerReserve(regionSize: UInt64) -> Int { CacheFormat.footerReserve(regionSize: regionSize) }
    /// Bytes before the first region (the superblock area); a cache's capacity includes them.
    public static var dataStart: UInt64 { CacheFormat.dataStart }
}

/// The NVMe cache of one worker: one region log per cache disk. A block lives on the disk its ID
/// picks; when that disk is out of service the next one in order takes its blocks, so a failed
/// disk turns its blocks into misses and the worker goes on with the others. Reads land in a
/// registered buffer and are checked (key, generation, CRC32C) every time.
public final class BlockCache: @unchecked Sendable {
    private let disks: [CacheDisk]
    /// Object prefixes whose blocks are kept through eviction.
    public let pins = PinSet()
    /// Where a block's data starts in a slot after a read, and where a fill must put it.
    public static let dataOffset = CacheFormat.headerSize

    public init(disks configs: [CacheDiskConfig], expectedBlockSize: UInt64 = 4 << 20, logger: Logger) throws(ShoalError) {
        guard !configs.isEmpty else { throw ShoalError(.badRequest, "no cache folder configured") }
        var seen = Set<String>()
        for c in configs where !seen.insert(c.path).inserted {
            throw ShoalError(.badRequest, "cache folder '\(c.path)' is listed twice")
        }
        var disks: [CacheDisk] = []
        for (i, c) in configs.enumerated() {
            disks.append(try CacheDisk(config: c, configKey: "caches[\(i)]", expectedBlockSize: expectedBlockSize, pins: pins, logger: logger))
        }
        self.disks = disks
    }

    /// The disk for a block: its home disk, or the next one in service.
    private func disk(for id: BlockID) -> CacheDisk? { diskIndex(for: id).map { disks[$0] } }

    private func diskIndex(for id: BlockID) -> Int? {
        let home = Int(id.high % UInt64(disks.count))
        for step in 0..<disks.count {
            let i = (home + step) % disks.count
            if !disks[i].isFailed { return i }
        }
        return nil
    }

    /// Reads a block into `slot`; with `range` (bytes of the block), only the checksummed chunks
    /// that cover it are read and checked.
    public func read(key: BlockKey, id: BlockID, into slot: IOSlot, range: Range<Int>? = nil) -> CacheRead {
        guard let d = disk(for: id) else { return .miss }
        return d.read(key: key, id: id, into: slot, range: range)
    }

    /// The same read in steps, for a caller that submits the I/O itself (an io_uring shard): the
    /// plan from the index (nil: a miss, counted), whose `first` and `second` reads go from
    /// `file(for:)` into a buffer of at least `capacity` bytes, then `complete` on that buffer.
    public func plan(id: BlockID, range: Range<Int>? = nil, capacity: Int) -> ReadPlan? {
        guard let i = diskIndex(for: id), var plan = disks[i].plan(id: id, range: range, capacity: capacity) else { return nil }
        plan.disk = i
        return plan
    }

    /// The cache file a plan reads.
    public func file(for plan: ReadPlan) -> FileHandle { disks[plan.disk].file }

    /// Checks what `plan`'s reads put in `buffer` (false `readComplete`: they came back short)
    /// and counts the outcome, as `read` does.
    /// `encodedKey` is `key.encoded` when the caller has it already (a READ as it arrived).
    public func complete(_ plan: ReadPlan, key: BlockKey, id: BlockID, buffer: UnsafeRawPointer, readComplete: Bool) -> CacheRead {
        disks[plan.disk].complete(plan, key: key, id: id, buffer: buffer, readComplete: readComplete)
    }

    /// The same for a key given as its encoding and the length it implies (no allocation on a
    /// hit); `key` decodes it, only where a pin rule or a bad record needs its names.
    public func complete(_ plan: ReadPlan, id: BlockID, buffer: UnsafeRawPointer, readComplete: Bool, encodedKey: UnsafeRawBufferPointer,
                         expectedLength: Int, key: () -> BlockKey) -> CacheRead {
        disks[plan.disk].complete(plan, id: id, buffer: buffer, readComplete: readComplete, encodedKey: encodedKey,
                                  expectedLength: expectedLength, key: key)
    }

    /// A plan's read failed or stalled: its disk is taken out of service.
    public func readFailed(_ plan: ReadPlan, reason: String) { disks[plan.disk].fail(reason) }

    public func contains(_ id: BlockID) -> Bool { disk(for: id)?.contains(id) ?? false }

    /// Drops block `key` (ID `id`) from the cache (`shoal evict`); the bytes it held, or nil when
    /// it was not cached. A snapshot written later leaves it out; after a crash, recovery from the
    /// region footers may bring it back (still that version's bytes, checked on every read).
    public func evict(_ key: BlockKey, id: BlockID) -> UInt64? { disk(for: id)?.evict(id, tag: key.object.datasetTag) }

    /// Appends a block (data in `slot` at `dataOffset`) to its disk. False if it was not cached
    /// because the disk's background cleaner had no clean region ready in time (counted in
    /// `CacheDiskStats.insertsDropped`; the block is a later miss).
    /// `chunkCRCs`: the block's chunk CRCs from `checksums(of:)`, when the caller has them.
    @discardableResult
    public func insert(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32, chunkCRCs: [UInt32]? = nil,
                       pinned: Bool = false) throws(ShoalError) -> Bool {
        guard let d = disk(for: id) else { throw ShoalError(.internal, "every cache disk is out of service") }
        return try d.insert(key: key, id: id, slot: slot, length: length, crc: crc, chunkCRCs: chunkCRCs, pinned: pinned || pins.covers(key))
    }

    /// A block's CRC32C and its chunks' (the ones its record on disk keeps), in one pass over
    /// the bytes: a fill checks the block with the first and hands the rest to `insert`.
    public static func checksums(of data: UnsafeRawBufferPointer) -> (crc: UInt32, chunks: [UInt32]) {
        let chunks = CacheFormat.chunkCRCs(data)
        let size = 1 << CacheFormat.chunkShift(dataLength: data.count)
        let last = data.count - max(0, chunks.count - 1) * size
        return (CRC32C.combine(pieces: chunks, pieceLength: size, lastLength: last, operators: zeroOperator), chunks)
    }

    /// Zero-byte operators by length, made once (blocks come in few lengths: whole ones and
    /// each object's last).
    private static func zeroOperator(_ bytes: Int) -> [UInt32] {
        if let known = operatorCache.lock.withLock({ operatorCache.byLength[bytes] }) { return known }
        let made = CRC32C.zeroOperator(bytes: bytes)
        operatorCache.lock.withLock {
            if operatorCache.byLength.count >= 1024 { operatorCache.byLength.removeAll() }
            operatorCache.byLength[bytes] = made
        }
        return made
    }

    private final class OperatorCache: @unchecked Sendable {
        let lock = ConditionLock()
        var byLength: [Int: [UInt32]] = [:]
    }

    private static let operatorCache = OperatorCache()

    /// The room that always holds blocks, over the disks in service: each disk's regions less the
    /// one being written and the clean one its cleaner keeps ready (eviction's working room).
    public var dataCapacity: UInt64 {
        disks.filter { !$0.isFailed }.reduce(0) { $0 + UInt64($1.regionCount - 2) * UInt64($1.usablePages) * 4096 }
    }

    /// Room pins may take: `dataCapacity`.
    public var pinnableBytes: UInt64 { dataCapacity }

    /// Blocks, bytes and evictions per dataset tag, over all disks in service.
    public var datasetBlocks: [UInt16: DatasetBlocks] {
        var out: [UInt16: DatasetBlocks] = [:]
        for d in diskStats where d.failure == nil {
            for (tag, c) in d.datasets {
                var t = out[tag] ?? DatasetBlocks()
                t.blocks += c.blocks
                t.bytes += c.bytes
                t.evictions += c.evictions
                out[tag] = t
            }
        }
        return out
    }

    public var blockCount: Int { disks.reduce(0) { $0 + $1.blockCount } }
    public var bytesCached: UInt64 { disks.reduce(0) { $0 + $1.bytesCached } }
    public var capacity: UInt64 { disks.reduce(0) { $0 + UInt64($1.regionCount) * $1.regionSize } }

    /// Counters and state of each disk.
    public var diskStats: [CacheDiskStats] { disks.map(\.snapshotStats) }

    /// Flushes each cache file.
    public func sync() { disks.forEach { $0.sync() } }

    /// Clean shutdown: stops each disk's background cleaner (after it seals the full regions it
    /// was handed) and writes its index snapshot so the next start need not read footers.
    public func close() {
        for d in disks { d.close() }
    }

    /// Waits until each disk's cleaner has sealed what it was handed and has its clean regions
    /// ready (tests: what the cache holds once background work is done).
    func waitForBackgroundWork() {
        for d in disks { d.cleaner.waitUntilIdle() }
    }

    /// The disks, for tests.
    var cacheDisks: [CacheDisk] { disks }

    /// The path of each disk's cache file (tests corrupt them on purpose).
    public var filePaths: [String] { disks.map { $0.file.path } }
}
