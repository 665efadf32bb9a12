#if canImport(Glibc)
import Glibc
#endif
import Logging
import ShoalCore
import ShoalIO
import ShoalSys

/// One cache folder (or raw block device) and what it may hold.
public struct CacheDiskConfig: Sendable, Equatable {
    public var path: String
    public var capacity: UInt64
    public var regionSize: UInt64
    /// Free space the filesystem under a cache folder must keep after the cache file is allocated.
    public var minFreeSpace: UInt64 = 0
    /// Whether a cache folder may sit on the root filesystem.
    public var allowRootFilesystem = true
    /// A read or write slower than this takes the disk out of service.
    public var stallTimeoutSeconds: Double = 10
    /// How long an insert that fills the active region may wait for the background cleaner to
    /// have the next region clean; past it the block is not cached (`insertsDropped`).
    public var cleanRegionWaitSeconds: Double = 0.1

    public init(path: String, capacity: UInt64, regionSize: UInt64 = 256 << 20) {
        self.path = path
        self.capacity = capacity
        self.regionSize = regionSize
    }
}

/// The outcome of a cache read.
public enum CacheRead: Sendable, Equatable {
    /// The block is in the buffer at `BlockCache.dataOffset` (after a ranged read, the checked
    /// chunks covering the range); its length and the whole block's CRC32C.
    case hit(length: Int, crc: UInt32)
    case miss
    /// The block was on disk but failed its checks; it has been dropped.
    case corrupt(reason: String)
}

/// Counters and sizes of one cache disk.
public struct CacheDiskStats: Sendable, Equatable {
    public var path = ""
    public var blocks = 0
    public var bytes: UInt64 = 0
    public var capacity: UInt64 = 0
    public var hits: UInt64 = 0
    public var misses: UInt64 = 0
    public var evictions: UInt64 = 0
    public var reinserted: UInt64 = 0
    public var corrupt: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    /// Times the log moved on to another region (the active one was full).
    public var regionSwitches: UInt64 = 0
    /// Inserts dropped because no clean region was ready (the cleaner was behind): later misses.
    public var insertsDropped: UInt64 = 0
    public var indexBytes = 0
    /// Why the disk is out of service; nil while it serves.
    public var failure: String?
    /// Blocks, bytes and evictions per dataset tag (`ObjectRef.datasetTag`).
    public var datasets: [UInt16: DatasetBlocks] = [:]
    /// How the index was rebuilt at start: "new", "snapshot" or "regions".
    public var recoveredFrom = "new"
    /// Regions whose records were walked at start (no valid footer).
    public var regionsWalked = 0
}

/// Cached blocks of one dataset on one disk.
public struct DatasetBlocks: Sendable, Equatable {
    public var blocks = 0
    /// Bytes of cached data, counted in 4 KiB pages.
    public var bytes: UInt64 = 0
    public var evictions: UInt64 = 0

    public init() {}
}

/// A region log on one disk, in files that each do one job: `ReadPlan` (what a read reads and
/// how its bytes are checked, no I/O), `RegionWriter` (appends to the active region),
/// `RegionCleaner` (seals full regions and keeps clean ones ready, on its own thread) and
/// `LogRecovery` (index from footers or the snapshot). This class opens the file and composes
/// them. Format: docs/FORMAT.md.
final class CacheDisk: @unchecked Sendable {
    let config: CacheDiskConfig
    let layout: RegionLayout
    let state: DiskState
    let writer: RegionWriter
    let cleaner: RegionCleaner
    private let snapshotPath: String?
    private let pins: PinSet
    private let logger: Logger

    static let fileName = "shoal-cache.dat"
    static let snapshotName = "shoal-index.snap"  // docs/FORMAT.md

    var file: FileHandle { state.file }
    var regionCount: UInt32 { layout.regionCount }
    var regionSize: UInt64 { layout.regionSize }
    var usablePages: UInt32 { layout.usablePages }

    /// `configKey` names this cache in the worker's config (`caches[N]`) for messages.
    init(config: CacheDiskConfig, configKey: String = "caches[0]", expectedBlockSize: UInt64 = 4 << 20, pins: PinSet = PinSet(),
         logger: Logger) throws(ShoalError) {
        self.config = config
        self.pins = pins
        self.logger = logger
        let isDevice = FileSystem.isBlockDevice(config.path)
        let filePath = isDevice ? config.path : config.path + "/" + CacheDisk.fileName
        snapshotPath = isDevice ? nil : config.path + "/" + CacheDisk.snapshotName
        if !isDevice {
            guard FileSystem.isDirectory(config.path) else {
                throw ShoalError(.badRequest, "cache folder '\(config.path)' does not exist (create it or fix the path)")
            }
            guard FileSystem.isWritable(config.path) else {
                throw ShoalError(.badRequest, "cache folder '\(config.path)' is not writable by this user")
            }
            if !config.allowRootFilesystem, (try? FileSystem.deviceID(config.path)) == (try? FileSystem.deviceID("/")) {
                throw ShoalError(.badRequest, "cache folder '\(config.path)' is on the root filesystem, which its config forbids (allowRootFilesystem: false)")
            }
        }
        guard config.regionSize >= 1 << 20, config.regionSize % UInt64(CacheFormat.alignment) == 0,
              config.regionSize <= 4 << 30 else {
            throw ShoalError(.badRequest, "region size \(config.regionSize) must be 1 MiB-4 GiB and a multiple of 4 KiB")
        }
        // The capacity is the whole file: the superblock area and the regions after it.
        let regions = config.capacity > CacheFormat.dataStart ? (config.capacity - CacheFormat.dataStart) / config.regionSize : 0
        guard regions >= 2 else {
            throw ShoalError(.badRequest, "key '\(configKey).capacity': \(ByteSize.format(config.capacity)) for cache '\(config.path)' must hold the \(ByteSize.format(CacheFormat.dataStart)) superblock area and at least two regions of \(ByteSize.format(config.regionSize))")
        }
        // Pages are numbered with 32 bits: a cache file addresses at most 16 TiB of regions.
        let addressable = UInt64(UInt32.max) / (config.regionSize / 4096)
        let regionCount = UInt32(min(regions, addressable))
        if regions > addressable {
            logger.warning("cache capacity clamped to what one cache file can address", metadata: [
                "key": "\(configKey).capacity", "asked": "\(ByteSize.format(config.capacity))",
                "most": "\(ByteSize.format(CacheFormat.dataStart + addressable * config.regionSize))",
                "used": "\(ByteSize.format(CacheFormat.dataStart + UInt64(regionCount) * config.regionSize))", "path": "\(config.path)",
            ])
        }
        let layout = RegionLayout(regionSize: config.regionSize, regionCount: regionCount)
        self.layout = layout
        let fileLength = CacheFormat.dataStart + UInt64(regionCount) * config.regionSize
        let file: FileHandle
        do {
            file = try FileHandle.open(filePath, isDevice ? [.direct] : [.create, .direct])
        } catch {
            if error.errno == EINVAL {
                throw ShoalError(.badRequest, "cache '\(config.path)' is on a filesystem without O_DIRECT (tmpfs?); use a folder on a real disk")
            }
            throw ShoalError(.badRequest, "cannot open cache file \(filePath): \(error)")
        }
        if !isDevice {
            // The file holds object bytes in the clear: owner only, also for a file an older version left 0644.
            do { try file.setPermissions(0o600) } catch {
                throw ShoalError(.badRequest, "cannot make cache file \(filePath) private (chmod 600): \(error)")
            }
        }
        // Sized for a full cache of records of the configured block size (it grows if blocks are smaller).
        let index = IndexTable(expectedBlocks: Int(UInt64(regionCount) * UInt64(layout.usablePages) * 4096 / (max(expectedBlockSize, 4096) + 4096)))
        let state = DiskState(file: file, layout: layout, path: config.path, index: index, stallNanos: UInt64(config.stallTimeoutSeconds * 1e9), logger: logger)
        state.stats.path = config.path
        state.stats.capacity = UInt64(regionCount) * config.regionSize
        self.state = state
        let cleaner = try RegionCleaner(state: state, pins: pins)
        self.cleaner = cleaner
        // Recovery borrows the cleaner's buffer: its thread starts after it.
        let slot = cleaner.slot
        let regionSize = config.regionSize

        let existing: CacheFormat.SuperblockState
        do {
            let size = try file.size()
            if isDevice && size < fileLength {
                throw ShoalError(.badRequest, "device \(filePath) has \(ByteSize.format(size)), less than the configured capacity")
            }
            var superblockRead = 0
            if size >= CacheFormat.dataStart {
                superblockRead = try slot.read(file: file, at: 0, count: CacheFormat.headerSize)
            }
            existing = superblockRead == CacheFormat.headerSize
                ? CacheFormat.decodeSuperblock(UnsafeRawBufferPointer(start: slot.base, count: CacheFormat.headerSize)) : .empty
            if !isDevice {
                let current = try file.size()
                if current < fileLength {
                    let (free, _) = try FileSystem.space(config.path)
                    let needed = fileLength - current
                    guard free >= needed + config.minFreeSpace else {
                        let most = current + (free > config.minFreeSpace ? free - config.minFreeSpace : 0)
                        throw ShoalError(.badRequest, "key '\(configKey).capacity': \(ByteSize.format(config.capacity)) asked for cache '\(config.path)', "
                                         + "but its filesystem has \(ByteSize.format(free)) free, the cache file already uses \(ByteSize.format(current)) "
                                         + "and \(ByteSize.format(config.minFreeSpace)) must stay free (\(configKey).minFreeSpace): at most \(ByteSize.format(most)) fits; "
                                         + "lower the capacity or free space")
                    }
                    try file.allocate(length: fileLength)
                } else if current > fileLength {
                    try file.truncate(length: fileLength)
                }
            }
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.internal, "cannot prepare cache file \(filePath): \(error)")
        }

        var active: OpenRegion?
        var ready: [OpenRegion] = []
        if case .valid(let rs, let rc) = existing, rs == regionSize, rc <= regionCount {
            if let loaded = CacheDisk.loadSnapshot(snapshotPath, regions: rc, state: state, logger: logger) {
                active = loaded
                ready = LogRecovery.readyRegions(after: loaded, state: state, slot: slot)
            } else {
                active = CacheDisk.recover(rc, state: state, slot: slot, logger: logger)
            }
        } else if case .valid(let rs, let rc) = existing, rs == regionSize, rc > regionCount {
            // A file with more regions (a smaller capacity now, or one laid out before the
            // superblock area counted in the capacity): keep the regions that still fit.
            logger.info("cache file shrunk to its capacity; blocks in the regions past it are dropped", metadata: [
                "path": "\(filePath)", "regions": "\(rc) -> \(regionCount)",
            ])
            active = CacheDisk.recover(regionCount, state: state, slot: slot, logger: logger)
            try CacheDisk.writeSuperblock(state: state, slot: slot, invalidatingRegions: false)
            if let snapshotPath { FileSystem.remove(snapshotPath) }
        } else {
            if existing != .empty {
                logger.warning("cache file has another layout or format version; starting it empty", metadata: ["path": "\(filePath)", "found": "\(existing)"])
            }
            try CacheDisk.writeSuperblock(state: state, slot: slot)
            if let snapshotPath { FileSystem.remove(snapshotPath) }
        }
        // A new file, or one with no region written: start at region 0.
        let start = active ?? OpenRegion(region: 0, generation: 0, writePage: 0, entries: [])
        let first: OpenRegion
        if start.generation == 0 {
            let generation = state.takeGeneration()
            state.lock.withLock { state.regionGeneration[0] = generation }
            first = OpenRegion(region: 0, generation: generation, writePage: 0, entries: [])
        } else {
            first = start
        }
        writer = RegionWriter(state: state, cleaner: cleaner, active: first, cleanWaitNanos: UInt64(max(config.cleanRegionWaitSeconds, 0) * 1e9))
        try cleaner.start(active: first, ready: ready)
    }

    deinit { cleaner.stop() }

    private static func writeSuperblock(state: DiskState, slot: IOSlot, invalidatingRegions: Bool = true) throws(ShoalError) {
        let layout = state.layout
        CacheFormat.memsetZero(slot.base, CacheFormat.headerSize)
        do {
            // Invalidate the first header of every region so an old file's records are not taken as current.
            if invalidatingRegions {
                for r in 0..<layout.regionCount { try slot.write(file: state.file, at: layout.regionStart(r), count: CacheFormat.headerSize) }
            }
            let sb = CacheFormat.encodeSuperblock(regionSize: layout.regionSize, regionCount: layout.regionCount)
            sb.withUnsafeBytes { slot.base.copyMemory(from: $0.baseAddress!, byteCount: sb.count) }
            try slot.write(file: state.file, at: 0, count: CacheFormat.headerSize)
            try state.file.sync()
        } catch {
            throw ShoalError(.internal, "cannot initialise cache file in '\(state.path)': \(error)")
        }
    }

    // MARK: reads

    /// Reads a block into `slot` (header at 0, data at `CacheFormat.headerSize`) and checks it:
    /// plan from the index, the plan's reads, then its checks (`ReadPlan.complete`). With `range`
    /// (bytes of the block's data) only the chunks that cover it are read and checked, the header
    /// and those chunks in one submission; the rest of the slot's data area is then undefined.
    func read(key: BlockKey, id: BlockID, into slot: IOSlot, range: Range<Int>? = nil) -> CacheRead {
        guard let plan = plan(id: id, range: range, capacity: slot.capacity) else { return .miss }
        let read = state.timedRead { () throws(SysError) -> Bool in
            if let second = plan.second {
                return try slot.readTwo(file: state.file, (plan.first.fileOffset, plan.first.count, plan.first.bufferOffset),
                                        (second.fileOffset, second.count, second.bufferOffset))
            }
            return try slot.read(file: state.file, at: plan.first.fileOffset, count: plan.first.count, bufferOffset: plan.first.bufferOffset) == plan.first.count
        }
        guard let complete = read else { return .miss }
        return self.complete(plan, key: key, id: id, buffer: slot.base, readComplete: complete)
    }

    /// The read plan for block `id` from the index (a miss, counted, if it is not there or does
    /// not fit a buffer of `capacity` bytes); marks the block as read since written (CLOCK).
    func plan(id: BlockID, range: Range<Int>?, capacity: Int) -> ReadPlan? {
        state.lock.withLock {
            guard state.stats.failure == nil, let e = state.index.lookup(id) else {
                state.stats.misses += 1
                return nil
            }
            state.index.setFlags(id, IndexEntry.hit)
            let generation = state.regionGeneration[Int(layout.region(ofPage: e.page))]
            let known = range == nil ? nil : state.headers.get(page: e.page, generation: generation)
            guard let plan = ReadPlan(page: e.page, pages: e.pages, generation: generation, range: range, capacity: capacity, knownHeader: known) else {
                state.stats.misses += 1
                return nil
            }
            return plan
        }
    }

    /// Checks what `plan` read into `buffer` and counts the outcome: a hit (pinning the block if a
    /// rule covers it now), a miss, or a bad record, which leaves the index.
    func complete(_ plan: ReadPlan, key: BlockKey, id: BlockID, buffer: UnsafeRawPointer, readComplete: Bool) -> CacheRead {
        key.encoded.withUnsafeBytes {
            complete(plan, id: id, buffer: buffer, readComplete: readComplete, encodedKey: $0, expectedLength: key.expectedLength) { key }
        }
    }

    /// The same for a key given as its encoding and the length it implies; `key` decodes it,
    /// only where a pin rule or a bad record needs its names.
    func complete(_ plan: ReadPlan, id: BlockID, buffer: UnsafeRawPointer, readComplete: Bool, encodedKey: UnsafeRawBufferPointer,
                  expectedLength: Int, key: () -> BlockKey) -> CacheRead {
        let generationNow = state.generation(ofRegion: layout.region(ofPage: plan.page))
        switch plan.complete(buffer, readComplete: readComplete, encodedKey: encodedKey, expectedLength: expectedLength, generationNow: generationNow) {
        case .hit(let length, let crc, let header):
            let pinned = !pins.isEmpty && pins.covers(key())
            state.lock.withLock {
                state.stats.hits += 1
                if let header { state.headers.put(page: plan.page, header) }
                if pinned, let e = state.index.lookup(id), e.page == plan.page, e.flags & IndexEntry.pinned == 0 { state.index.setFlags(id, IndexEntry.pinned) }
            }
            return .hit(length: length, crc: crc)
        case .miss:
            state.lock.withLock { state.stats.misses += 1 }
            return .miss
        case .corrupt(let reason):
            state.lock.withLock {
                state.headers.remove(page: plan.page)
                if state.index.remove(id, ifAt: plan.page) { state.count(key().object.datasetTag, plan.pages, -1, evicted: true) }
                state.stats.corrupt += 1
                state.stats.misses += 1
            }
            return .corrupt(reason: reason)
        }
    }

    /// Takes the disk out of service: its blocks become misses and nothing more is written to it.
    func fail(_ reason: String) { state.fail(reason) }

    var isFailed: Bool { state.isFailed }

    // MARK: writes

    /// Appends a block whose data is in `slot` at `CacheFormat.headerSize` (`RegionWriter`).
    /// False if it was not cached because no clean region was ready in time.
    @discardableResult
    func insert(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32, chunkCRCs: [UInt32]? = nil, pinned: Bool = false) throws(ShoalError) -> Bool {
        try writer.append(key: key, id: id, slot: slot, length: length, crc: crc, chunkCRCs: chunkCRCs, pinned: pinned)
    }

    // MARK: recovery and snapshot

    private static func recover(_ regions: UInt32, state: DiskState, slot: IOSlot, logger: Logger) -> OpenRegion? {
        let start = monotonicNanos()
        let (active, walked) = LogRecovery.fromRegions(regions, state: state, slot: slot)
        let blocks = state.lock.withLock {
            state.stats.recoveredFrom = "regions"
            state.stats.regionsWalked = walked
            return state.index.count
        }
        let ms = Double(monotonicNanos() - start) / 1e6
        logger.info("cache recovered from regions", metadata: [
            "path": "\(state.path)", "blocks": "\(blocks)", "walked": "\(walked)", "ms": "\(formatFixed(ms, decimals: 1))",
        ])
        return active
    }

    /// Loads and deletes the snapshot; nil if there is none or it does not check out.
    private static func loadSnapshot(_ snapshotPath: String?, regions: UInt32, state: DiskState, logger: Logger) -> OpenRegion? {
        guard let snapshotPath, FileSystem.exists(snapshotPath) else { return nil }
        let start = monotonicNanos()
        // Used once: a crash after this start must not bring back this (by then stale) picture.
        defer { FileSystem.remove(snapshotPath) }
        guard let bytes = try? FileSystem.readFile(snapshotPath) else { return nil }
        switch LogRecovery.load(bytes, regions: regions, state: state) {
        case .failure(.damaged):
            logger.warning("index snapshot is damaged; reading region footers instead", metadata: ["path": "\(snapshotPath)"])
            return nil
        case .failure(.mismatched):
            return nil
        case .success(let active):
            let blocks = state.lock.withLock {
                state.stats.recoveredFrom = "snapshot"
                return state.index.count
            }
            let ms = Double(monotonicNanos() - start) / 1e6
            logger.info("cache recovered from snapshot", metadata: ["path": "\(state.path)", "blocks": "\(blocks)", "ms": "\(formatFixed(ms, decimals: 1))"])
            return active
        }
    }

    /// Clean shutdown: seals what the writer handed over, stops the cleaner, then writes the
    /// index and the log's position to the snapshot file. Later inserts are dropped (no region
    /// is made clean any more).
    func close() {
        cleaner.stop()
        try? state.file.sync()
        guard let snapshotPath, !isFailed else { return }
        let out = LogRecovery.snapshot(state: state, active: writer.active)
        let tmp = snapshotPath + ".tmp"
        do {
            try FileSystem.writeFile(tmp, out)
            try FileHandle.open(tmp).sync()
            try FileSystem.rename(tmp, snapshotPath)
        } catch {
            logger.warning("could not write the index snapshot; the next start reads region footers", metadata: ["path": "\(snapshotPath)", "error": "\(error)"])
        }
    }

    // MARK: queries

    var blockCount: Int { state.lock.withLock { state.index.count } }

    func contains(_ id: BlockID) -> Bool { state.lock.withLock { state.index.lookup(id) != nil } }

    /// Drops block `id` (of dataset `tag`) from the index, pinned or not: later reads miss. Its
    /// record stays on disk until its region is cleaned; the bytes of the record it held, or nil.
    func evict(_ id: BlockID, tag: UInt16) -> UInt64? {
        state.lock.withLock {
            guard let e = state.index.lookup(id), state.index.remove(id) else { return nil }
            state.headers.remove(page: e.page)
            state.count(tag, e.pages, -1, evicted: true)
            return UInt64(max(Int(e.pages) - 1, 0)) * 4096
        }
    }

    var snapshotStats: CacheDiskStats {
        state.lock.withLock {
            var s = state.stats
            s.blocks = state.index.count
            s.indexBytes = state.index.memoryBytes
            return s
        }
    }

    /// Bytes of block data cached (in 4 KiB pages), kept with the per-dataset counts rather than
    /// read off the index, which would hold the lock for a walk of the whole table.
    var bytesCached: UInt64 {
        state.lock.withLock { state.stats.datasets.values.reduce(0) { $0 + $1.bytes } }
    }

    func sync() { try? state.file.sync() }
}
