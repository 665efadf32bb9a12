#if canImport(Glibc)
import Glibc
#endif
import Logging
import ShoalCore
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

/// A region log on one disk. Blocks are appended 4 KiB-aligned as records (header with the full
/// key, length and CRC32C, then data); a full region is sealed with a footer listing its blocks and
/// the oldest region is reused, re-appending the blocks read since they were written (CLOCK) and
/// pinned ones. The index is an `IndexTable`. Format: docs/FORMAT.md.
final class CacheDisk: @unchecked Sendable {
    let config: CacheDiskConfig
    let file: FileHandle
    let regionSize: UInt64
    let regionCount: UInt32
    let pagesPerRegion: UInt32
    /// Pages of each region that records may use (the rest holds the footer).
    let usablePages: UInt32
    let footerReserve: Int
    private let snapshotPath: String?
    private let logger: Logger

    /// Guards the index, the region generations, the failure state and the counters.
    private let lock = ConditionLock()
    /// Serialises appends, sealing and eviction (one writer per disk, as the device prefers).
    private let writer = ConditionLock()
    private var index: IndexTable
    private var regionGeneration: [UInt64]
    /// Record headers recently read for ranged reads, by page: a ranged read of a block whose
    /// header is here reads only its chunks (one I/O instead of two). Lock held.
    private var headers = HeaderCache(capacity: 8192)
    private var activeRegion: UInt32 = 0
    private var writePage: UInt32 = 0
    private var activeEntries: [CacheFormat.FooterEntry] = []
    private var nextGeneration: UInt64 = 1
    private var stats = CacheDiskStats()

    /// Counts a block in (+1) or out (-1) of its dataset. Lock held.
    private func count(_ tag: UInt16, _ pages: UInt16, _ sign: Int, evicted: Bool = false) {
        var d = stats.datasets[tag] ?? DatasetBlocks()
        d.blocks += sign
        let bytes = UInt64(max(Int(pages) - 1, 0)) * 4096
        d.bytes = sign > 0 ? d.bytes + bytes : (d.bytes >= bytes ? d.bytes - bytes : 0)
        if evicted { d.evictions += 1 }
        stats.datasets[tag] = d
    }
    private let maintenance: BufferPool
    private let maintenanceSlot: IOSlot
    private let stallNanos: UInt64

    static let fileName = "shoal-cache.dat"
    static let snapshotName = "shoal-index.snap"  // docs/FORMAT.md

    private let pins: PinSet

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
        regionSize = config.regionSize
        // Pages are numbered with 32 bits: a cache file addresses at most 16 TiB of regions.
        let addressable = UInt64(UInt32.max) / (config.regionSize / 4096)
        regionCount = UInt32(min(regions, addressable))
        if regions > addressable {
            logger.warning("cache capacity clamped to what one cache file can address", metadata: [
                "key": "\(configKey).capacity", "asked": "\(ByteSize.format(config.capacity))",
                "most": "\(ByteSize.format(CacheFormat.dataStart + addressable * config.regionSize))",
                "used": "\(ByteSize.format(CacheFormat.dataStart + UInt64(regionCount) * config.regionSize))", "path": "\(config.path)",
            ])
        }
        pagesPerRegion = UInt32(regionSize / 4096)
        footerReserve = CacheFormat.footerReserve(regionSize: regionSize)
        usablePages = pagesPerRegion - UInt32(footerReserve / 4096)
        stallNanos = UInt64(config.stallTimeoutSeconds * 1e9)
        let fileLength = CacheFormat.dataStart + UInt64(regionCount) * regionSize
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
        do {
            maintenance = try BufferPool(bufferSize: max(footerReserve, Int(BlockLayout.maxBlockSize) + CacheFormat.headerSize), count: 1)
        } catch {
            throw ShoalError(.internal, "cannot allocate the maintenance buffer for '\(config.path)': \(error)")
        }
        maintenanceSlot = maintenance.acquire()!
        // Sized for a full cache of records of the configured block size (it grows if blocks are smaller).
        index = IndexTable(expectedBlocks: Int(UInt64(regionCount) * UInt64(usablePages) * 4096 / (max(expectedBlockSize, 4096) + 4096)))
        regionGeneration = Array(repeating: 0, count: Int(regionCount))
        stats.path = config.path
        stats.capacity = UInt64(regionCount) * regionSize

        let existing: CacheFormat.SuperblockState
        do {
            let size = try file.size()
            if isDevice && size < fileLength {
                throw ShoalError(.badRequest, "device \(filePath) has \(ByteSize.format(size)), less than the configured capacity")
            }
            var superblockRead = 0
            if size >= CacheFormat.dataStart {
                superblockRead = try maintenanceSlot.read(file: file, at: 0, count: CacheFormat.headerSize)
            }
            existing = superblockRead == CacheFormat.headerSize
                ? CacheFormat.decodeSuperblock(UnsafeRawBufferPointer(start: maintenanceSlot.base, count: CacheFormat.headerSize)) : .empty
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

        if case .valid(let rs, let rc) = existing, rs == regionSize, rc <= regionCount {
            if !loadSnapshot(regions: rc) { recoverFromRegions(rc) }
        } else if case .valid(let rs, let rc) = existing, rs == regionSize, rc > regionCount {
            // A file with more regions (a smaller capacity now, or one laid out before the
            // superblock area counted in the capacity): keep the regions that still fit.
            logger.info("cache file shrunk to its capacity; blocks in the regions past it are dropped", metadata: [
                "path": "\(filePath)", "regions": "\(rc) -> \(regionCount)",
            ])
            recoverFromRegions(regionCount)
            try writeSuperblock(invalidatingRegions: false)
            if let snapshotPath { FileSystem.remove(snapshotPath) }
        } else {
            if existing != .empty {
                logger.warning("cache file has another layout or format version; starting it empty", metadata: ["path": "\(filePath)", "found": "\(existing)"])
            }
            try writeSuperblock()
            if let snapshotPath { FileSystem.remove(snapshotPath) }
            startRegion(0)
        }
    }

    // MARK: layout

    func regionStart(_ r: UInt32) -> UInt64 { CacheFormat.dataStart + UInt64(r) * regionSize }
    func byteOffset(page: UInt32) -> UInt64 { CacheFormat.dataStart + UInt64(page) * 4096 }
    func region(ofPage page: UInt32) -> UInt32 { page / pagesPerRegion }
    var footerOffset: UInt64 { UInt64(usablePages) * 4096 }

    private func writeSuperblock(invalidatingRegions: Bool = true) throws(ShoalError) {
        let slot = maintenanceSlot
        CacheFormat.memsetZero(slot.base, CacheFormat.headerSize)
        do {
            // Invalidate the first header of every region so an old file's records are not taken as current.
            if invalidatingRegions {
                for r in 0..<regionCount { try slot.write(file: file, at: regionStart(r), count: CacheFormat.headerSize) }
            }
            let sb = CacheFormat.encodeSuperblock(regionSize: regionSize, regionCount: regionCount)
            sb.withUnsafeBytes { slot.base.copyMemory(from: $0.baseAddress!, byteCount: sb.count) }
            try slot.write(file: file, at: 0, count: CacheFormat.headerSize)
            try file.sync()
        } catch {
            throw ShoalError(.internal, "cannot initialise cache file in '\(config.path)': \(error)")
        }
    }

    // MARK: reads

    /// Reads a block into `slot` (header at 0, data at `CacheFormat.headerSize`) and checks it:
    /// the header's CRC, generation and full key, then the data's CRC32C. With `range` (bytes of
    /// the block's data) only the chunks that cover it are read and checked, the header and those
    /// chunks in one submission; the rest of the slot's data area is then undefined.
    func read(key: BlockKey, id: BlockID, into slot: IOSlot, range: Range<Int>? = nil) -> CacheRead {
        let found: (IndexEntry, UInt64)? = lock.withLock {
            guard stats.failure == nil, let e = index.lookup(id) else { stats.misses += 1; return nil }
            index.setFlags(id, IndexEntry.hit)
            return (e, regionGeneration[Int(region(ofPage: e.page))])
        }
        guard let (entry, generation) = found else { return .miss }
        let count = Int(entry.pages) * 4096
        guard count <= slot.capacity else { return countMiss() }
        let dataBytes = count - CacheFormat.headerSize
        let shift = CacheFormat.chunkShift(dataPages: dataBytes / 4096)
        // The chunks a partial read needs, as a byte range of the data area (4 KiB-aligned).
        var chunkBytes = 0..<dataBytes
        if let range, !range.isEmpty, range.upperBound <= dataBytes {
            let lower = (range.lowerBound >> shift) << shift
            let upper = min(dataBytes, ((range.upperBound + (1 << shift) - 1) >> shift) << shift)
            if upper - lower < dataBytes / 2 { chunkBytes = lower..<upper }
        }
        let partial = chunkBytes.count < dataBytes
        let at = byteOffset(page: entry.page)
        let dataOffset = CacheFormat.headerSize + chunkBytes.lowerBound
        if partial, let cached = lock.withLock({ headers.get(page: entry.page, generation: generation) }) {
            return readChunks(key: key, id: id, entry: entry, generation: generation, header: cached, chunkBytes: chunkBytes, into: slot)
        }
        let read = timedRead { () throws(SysError) -> Bool in
            partial ? try slot.readTwo(file: file, (at, CacheFormat.headerSize, 0), (at + UInt64(dataOffset), chunkBytes.count, dataOffset))
                : try slot.read(file: file, at: at, count: count) == count
        }
        guard let complete = read else { return .miss }
        guard complete, let header = CacheFormat.readHeader(slot.base) else {
            return stillCurrent(id, entry, generation) ? drop(id, entry, key, reason: "record header unreadable") : countMiss()
        }
        // The region may have been reused while the read was in flight (another generation), or
        // the 40-bit tag matched another block (another key): a miss, nothing to drop.
        guard header.generation == generation, header.key == key.encoded else { return countMiss() }
        let length = Int(header.dataLength)
        guard length <= dataBytes, header.chunkShift == shift else {
            return drop(id, entry, key, reason: "record length \(header.dataLength) does not match its index entry")
        }
        guard length == key.expectedLength else {
            return drop(id, entry, key, reason: "record length \(length) is not the \(key.expectedLength) bytes its key implies")
        }
        if partial {
            let cached = CachedHeader(generation: generation, key: header.key, dataLength: length, dataCRC: header.dataCRC,
                                      chunkShift: shift, chunkCRCs: header.chunkCRCs(slot.base))
            lock.withLock { headers.put(page: entry.page, cached) }
            return verifyChunks(key: key, id: id, entry: entry, header: cached, chunkBytes: chunkBytes, slot: slot)
        }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: length))
        guard crc == header.dataCRC else {
            return drop(id, entry, key, reason: "CRC32C mismatch (stored \(header.dataCRC), computed \(crc))")
        }
        return countHit(key: key, id: id, entry: entry, length: length, crc: header.dataCRC)
    }

    /// A ranged read with the header already known: one read of the chunks, then the checks
    /// (the region still of that generation after the read, the key, each chunk's CRC32C).
    private func readChunks(key: BlockKey, id: BlockID, entry: IndexEntry, generation: UInt64, header: CachedHeader,
                            chunkBytes: Range<Int>, into slot: IOSlot) -> CacheRead {
        let dataOffset = CacheFormat.headerSize + chunkBytes.lowerBound
        let read = timedRead { () throws(SysError) -> Int in
            try slot.read(file: file, at: byteOffset(page: entry.page) + UInt64(dataOffset), count: chunkBytes.count, bufferOffset: dataOffset)
        }
        guard let n = read else { return .miss }
        guard n == chunkBytes.count, stillCurrent(id, entry, generation), header.key == key.encoded else { return countMiss() }
        return verifyChunks(key: key, id: id, entry: entry, header: header, chunkBytes: chunkBytes, slot: slot)
    }

    /// Runs a read; an I/O error, or a read slower than `stallTimeout`, takes the disk out of
    /// service. nil after an error.
    private func timedRead<T>(_ body: () throws(SysError) -> T) -> T? {
        let start = monotonicNanos()
        let result: T
        do { result = try body() } catch {
            fail("read error: \(error)")
            return nil
        }
        let elapsed = monotonicNanos() - start
        if elapsed > stallNanos { fail("a read took \(elapsed / 1_000_000) ms (limit \(stallNanos / 1_000_000) ms)") }
        return result
    }

    private func verifyChunks(key: BlockKey, id: BlockID, entry: IndexEntry, header: CachedHeader, chunkBytes: Range<Int>, slot: IOSlot) -> CacheRead {
        let shift = header.chunkShift
        let length = header.dataLength
        let data = slot.base + CacheFormat.headerSize
        guard length == key.expectedLength else {
            lock.withLock { headers.remove(page: entry.page) }
            return drop(id, entry, key, reason: "record length \(length) is not the \(key.expectedLength) bytes its key implies")
        }
        for i in (chunkBytes.lowerBound >> shift)..<(min(chunkBytes.upperBound, length) + (1 << shift) - 1) >> shift {
            let from = i << shift
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: data + from, count: min(length, from + (1 << shift)) - from))
            guard crc == header.chunkCRCs[i] else {
                lock.withLock { headers.remove(page: entry.page) }
                return drop(id, entry, key, reason: "CRC32C mismatch in chunk \(i) (stored \(header.chunkCRCs[i]), computed \(crc))")
            }
        }
        return countHit(key: key, id: id, entry: entry, length: length, crc: header.dataCRC)
    }

    private func countHit(key: BlockKey, id: BlockID, entry: IndexEntry, length: Int, crc: UInt32) -> CacheRead {
        let pinned = !pins.isEmpty && pins.covers(key)
        lock.withLock {
            stats.hits += 1
            if pinned && entry.flags & IndexEntry.pinned == 0 { index.setFlags(id, IndexEntry.pinned) }
        }
        return .hit(length: length, crc: crc)
    }

    private func countMiss() -> CacheRead {
        lock.withLock { stats.misses += 1 }
        return .miss
    }

    private func stillCurrent(_ id: BlockID, _ e: IndexEntry, _ generation: UInt64) -> Bool {
        lock.withLock { regionGeneration[Int(region(ofPage: e.page))] == generation && index.lookup(id)?.page == e.page }
    }

    private func drop(_ id: BlockID, _ e: IndexEntry, _ key: BlockKey, reason: String) -> CacheRead {
        lock.withLock {
            if index.remove(id, ifAt: e.page) { count(key.object.datasetTag, e.pages, -1, evicted: true) }
            stats.corrupt += 1
            stats.misses += 1
        }
        return .corrupt(reason: reason)
    }

    /// Takes the disk out of service: its blocks become misses and nothing more is written to it.
    func fail(_ reason: String) {
        let first: Bool = lock.withLock {
            guard stats.failure == nil else { return false }
            stats.failure = reason
            return true
        }
        if first { logger.error("cache disk taken out of service", metadata: ["path": "\(config.path)", "reason": "\(reason)"]) }
    }

    var isFailed: Bool { lock.withLock { stats.failure != nil } }

    // MARK: writes

    /// Appends a block whose data is in `slot` at `CacheFormat.headerSize`: writes the header in
    /// front of it and the whole record with one O_DIRECT write.
    func insert(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32, pinned: Bool = false) throws(ShoalError) {
        let encoded = key.encoded
        guard encoded.count <= CacheFormat.maxKeyBytes else { throw ShoalError(.tooLarge, "block key too long to cache") }
        guard length == key.expectedLength else {
            throw ShoalError(.badRequest, "block \(key) has \(length) bytes where its key implies \(key.expectedLength); not cached")
        }
        let count = CacheFormat.recordLength(dataLength: length)
        let pages = UInt32(count / 4096)
        guard pages <= usablePages / 2, count <= slot.capacity else {
            throw ShoalError(.tooLarge, "a record of \(count) bytes does not fit a region of \(regionSize) (use a larger regionSize)")
        }
        writer.lock()
        defer { writer.unlock() }
        if let failure = lock.withLock({ stats.failure }) { throw ShoalError(.internal, "cache disk '\(config.path)' is out of service: \(failure)") }
        if writePage + pages > usablePages { try sealAndAdvance() }
        let generation = lock.withLock { regionGeneration[Int(activeRegion)] }
        let page = activeRegion * pagesPerRegion + writePage
        let chunks = CacheFormat.chunkCRCs(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: length))
        CacheFormat.writeHeader(into: slot.base, key: encoded, generation: generation, dataLength: UInt32(length), dataCRC: crc, chunkCRCs: chunks)
        let pad = count - CacheFormat.headerSize - length
        if pad > 0 { CacheFormat.memsetZero(slot.base + CacheFormat.headerSize + length, pad) }
        try write(slot, count: count, at: byteOffset(page: page))
        let flags: UInt8 = pinned ? IndexEntry.pinned : 0
        let tag = key.object.datasetTag
        lock.withLock {
            if let old = index.insert(id, IndexEntry(page: page, pages: UInt16(pages), flags: flags)) { self.count(tag, old.pages, -1) }
            self.count(tag, UInt16(pages), +1)
            stats.bytesWritten += UInt64(count)
        }
        activeEntries.append(CacheFormat.FooterEntry(id: id, pageInRegion: writePage, pages: UInt16(pages), flags: UInt16(flags), dataset: tag))
        writePage += pages
    }

    private func write(_ slot: IOSlot, count: Int, at offset: UInt64) throws(ShoalError) {
        let start = monotonicNanos()
        do { try slot.write(file: file, at: offset, count: count) } catch {
            fail("write error: \(error)")
            throw ShoalError(.internal, "cache write to '\(config.path)' failed: \(error)")
        }
        let elapsed = monotonicNanos() - start
        if elapsed > stallNanos { fail("a write took \(elapsed / 1_000_000) ms (limit \(stallNanos / 1_000_000) ms)") }
    }

    /// Seals the active region with its footer and starts the next (the oldest). Writer lock held.
    private func sealAndAdvance() throws(ShoalError) {
        let generation = lock.withLock { regionGeneration[Int(activeRegion)] }
        guard CacheFormat.encodeFooter(into: maintenanceSlot.base, capacity: footerReserve, generation: generation, entries: activeEntries) else {
            throw ShoalError(.internal, "footer of region \(activeRegion) overflowed")
        }
        try write(maintenanceSlot, count: footerReserve, at: regionStart(activeRegion) + footerOffset)
        try evictAndStart((activeRegion + 1) % regionCount)
        lock.withLock { stats.regionSwitches += 1 }
    }

    /// Starts region `r` afresh (a new file): nothing in it to keep. Lock not needed at init.
    private func startRegion(_ r: UInt32) {
        regionGeneration[Int(r)] = nextGeneration
        nextGeneration += 1
        activeRegion = r
        writePage = 0
        activeEntries = []
    }

    /// Reuses region `r`: its blocks leave the index, except those read since they were written
    /// and pinned ones, which are compacted to the front of the region in their order (each moves
    /// only backwards, so no block is overwritten before it has been moved). Writer lock held.
    private func evictAndStart(_ r: UInt32) throws(ShoalError) {
        let oldGeneration = lock.withLock { regionGeneration[Int(r)] }
        var listed: [CacheFormat.FooterEntry]?
        if oldGeneration != 0 { listed = readFooter(r, generation: oldGeneration) }
        let newGeneration = nextGeneration
        nextGeneration += 1
        let base = r * pagesPerRegion
        var keep: [(CacheFormat.FooterEntry, IndexEntry)] = []
        lock.withLock {
            regionGeneration[Int(r)] = newGeneration  // readers of the old records now miss
            guard let listed else {
                let removed = index.removeAll(inPages: base..<(base + pagesPerRegion))
                stats.evictions += UInt64(removed)
                return
            }
            var keptPages: UInt32 = 0
            for e in listed {
                let page = base + e.pageInRegion
                guard let current = index.lookup(e.id), current.page == page else { continue }
                let pinned = current.flags & IndexEntry.pinned != 0
                let hot = current.flags & IndexEntry.hit != 0
                // Hot blocks may take half the region; pinned ones are always kept.
                if pinned || (hot && keptPages + UInt32(current.pages) <= usablePages / 2) {
                    keep.append((e, current))
                    keptPages += UInt32(current.pages)
                } else {
                    index.remove(e.id, ifAt: page)
                    stats.evictions += 1
                    count(e.dataset, current.pages, -1, evicted: true)
                }
            }
        }
        activeRegion = r
        writePage = 0
        activeEntries = []
        for (e, current) in keep {
            let slot = maintenanceSlot
            let count = Int(current.pages) * 4096
            let oldPage = base + e.pageInRegion
            let ok: Bool
            do { ok = try slot.read(file: file, at: byteOffset(page: oldPage), count: count) == count } catch {
                fail("read error while evicting: \(error)")
                throw ShoalError(.internal, "cache disk '\(config.path)' failed while evicting: \(error)")
            }
            // A pinned block stays only while a pin still covers it (pins expire and are removed).
            var flags = current.flags & ~IndexEntry.hit
            var header: CacheFormat.Header?
            if ok, let h = CacheFormat.readHeader(slot.base) {
                header = h
                if flags & IndexEntry.pinned != 0, !(BlockKey(encoded: h.key).map(pins.covers) ?? false) {
                    flags &= ~IndexEntry.pinned
                    if current.flags & IndexEntry.hit == 0 { header = nil }
                }
            }
            guard let header, header.generation == oldGeneration,
                  CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: Int(header.dataLength))) == header.dataCRC,
                  writePage + UInt32(current.pages) <= usablePages
            else {
                lock.withLock {
                    if index.remove(e.id, ifAt: oldPage) { self.count(e.dataset, current.pages, -1, evicted: true) }
                    stats.evictions += 1
                }
                continue
            }
            CacheFormat.writeHeader(into: slot.base, key: header.key, generation: newGeneration, dataLength: header.dataLength, dataCRC: header.dataCRC,
                                    chunkCRCs: header.chunkCRCs(slot.base))
            let newPage = base + writePage
            try write(slot, count: count, at: byteOffset(page: newPage))
            lock.withLock {
                index.insert(e.id, IndexEntry(page: newPage, pages: current.pages, flags: flags))
                stats.reinserted += 1
                stats.bytesWritten += UInt64(count)
            }
            activeEntries.append(CacheFormat.FooterEntry(id: e.id, pageInRegion: writePage, pages: current.pages, flags: UInt16(flags), dataset: e.dataset))
            writePage += UInt32(current.pages)
        }
    }

    /// The entries of region `r`'s footer if it is valid and of `generation`.
    private func readFooter(_ r: UInt32, generation: UInt64) -> [CacheFormat.FooterEntry]? {
        let slot = maintenanceSlot
        let at = regionStart(r) + footerOffset
        guard (try? slot.read(file: file, at: at, count: 4096)) == 4096 else { return nil }
        let count = Int(UInt32(littleEndian: slot.base.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let size = CacheFormat.alignUp(CacheFormat.footerFixed + CacheFormat.footerEntrySize * count + 4)
        guard size <= footerReserve else { return nil }
        if size > 4096 {
            guard (try? slot.read(file: file, at: at + 4096, count: size - 4096, bufferOffset: 4096)) == size - 4096 else { return nil }
        }
        guard let (g, entries) = CacheFormat.decodeFooter(slot.base, capacity: footerReserve), g == generation else { return nil }
        return entries
    }

    // MARK: recovery

    /// Rebuilds the index from each region: its footer if the region was sealed in the generation
    /// of its first record, else by walking its records (the region being written at the crash).
    private func recoverFromRegions(_ regions: UInt32) {
        let start = monotonicNanos()
        var walked = 0
        var newest: (region: UInt32, generation: UInt64, endPage: UInt32, entries: [CacheFormat.FooterEntry])?
        let slot = maintenanceSlot
        for r in 0..<regions {
            guard (try? slot.read(file: file, at: regionStart(r), count: CacheFormat.headerSize)) == CacheFormat.headerSize,
                  let first = CacheFormat.readHeader(slot.base), first.generation != 0 else { continue }
            let generation = first.generation
            var entries: [CacheFormat.FooterEntry]
            var endPage: UInt32
            if let listed = readFooter(r, generation: generation) {
                entries = listed
                endPage = usablePages
            } else {
                (entries, endPage) = walkRecords(r, generation: generation)
                walked += 1
            }
            let base = r * pagesPerRegion
            for e in entries {
                if let old = index.insert(e.id, IndexEntry(page: base + e.pageInRegion, pages: e.pages, flags: UInt8(truncatingIfNeeded: e.flags) & IndexEntry.pinned)) {
                    count(e.dataset, old.pages, -1)
                }
                count(e.dataset, e.pages, +1)
            }
            regionGeneration[Int(r)] = generation
            nextGeneration = max(nextGeneration, generation + 1)
            if generation >= (newest?.generation ?? 0) { newest = (r, generation, endPage, entries) }
        }
        if let newest {
            activeRegion = newest.region
            writePage = newest.endPage
            activeEntries = newest.entries
        } else {
            startRegion(0)
        }
        stats.recoveredFrom = "regions"
        stats.regionsWalked = walked
        let ms = Double(monotonicNanos() - start) / 1e6
        logger.info("cache recovered from regions", metadata: [
            "path": "\(config.path)", "blocks": "\(index.count)", "walked": "\(walked)", "ms": "\(formatFixed(ms, decimals: 1))",
        ])
    }

    /// Follows region `r`'s records while their headers are valid and of `generation`.
    private func walkRecords(_ r: UInt32, generation: UInt64) -> ([CacheFormat.FooterEntry], UInt32) {
        var entries: [CacheFormat.FooterEntry] = []
        var page: UInt32 = 0
        let slot = maintenanceSlot
        while page + 2 <= usablePages {
            guard (try? slot.read(file: file, at: regionStart(r) + UInt64(page) * 4096, count: CacheFormat.headerSize)) == CacheFormat.headerSize,
                  let h = CacheFormat.readHeader(slot.base), h.generation == generation, let key = BlockKey(encoded: h.key)
            else { break }
            let pages = UInt32(CacheFormat.recordLength(dataLength: Int(h.dataLength)) / 4096)
            guard page + pages <= usablePages else { break }
            entries.append(CacheFormat.FooterEntry(id: key.id, pageInRegion: page, pages: UInt16(pages), flags: 0, dataset: key.object.datasetTag))
            page += pages
        }
        return (entries, page)
    }

    // MARK: snapshot

    /// Writes the index and the log's position to the snapshot file (clean shutdown). Later
    /// writes must not happen: the caller is closing the disk.
    func writeSnapshot() {
        guard let snapshotPath, !isFailed else { return }
        writer.lock()
        defer { writer.unlock() }
        var out = CacheFormat.snapshotMagic
        lock.withLock {
            out.appendLE(CacheFormat.version)
            out.appendLE(regionSize)
            out.appendLE(regionCount)
            out.appendLE(activeRegion)
            out.appendLE(writePage)
            out.appendLE(nextGeneration)
            for g in regionGeneration { out.appendLE(g) }
            out.appendLE(UInt64(activeEntries.count))
            for e in activeEntries {
                out.appendLE(e.id.high); out.appendLE(e.id.low); out.appendLE(e.pageInRegion); out.appendLE(e.pages); out.appendLE(e.flags)
                out.appendLE(e.dataset)
            }
            out.appendLE(UInt32(stats.datasets.count))
            for (tag, d) in stats.datasets.sorted(by: { $0.key < $1.key }) {
                out.appendLE(tag); out.appendLE(UInt64(max(d.blocks, 0))); out.appendLE(d.bytes); out.appendLE(d.evictions)
            }
            out.appendLE(UInt64(index.count))
            out.reserveCapacity(out.count + index.count * 15 + 4)
            index.forEach { tag, e in
                out.appendLE(tag); out.appendLE(e.page); out.appendLE(e.pages); out.appendLE(e.flags)
            }
        }
        out.appendLE(CRC32C.checksum(out))
        let tmp = snapshotPath + ".tmp"
        do {
            try FileSystem.writeFile(tmp, out)
            try FileHandle.open(tmp).sync()
            try FileSystem.rename(tmp, snapshotPath)
        } catch {
            logger.warning("could not write the index snapshot; the next start reads region footers", metadata: ["path": "\(snapshotPath)", "error": "\(error)"])
        }
    }

    /// Loads and deletes the snapshot; false if there is none or it does not check out.
    private func loadSnapshot(regions: UInt32) -> Bool {
        guard let snapshotPath, FileSystem.exists(snapshotPath) else { return false }
        let start = monotonicNanos()
        // Used once: a crash after this start must not bring back this (by then stale) picture.
        defer { FileSystem.remove(snapshotPath) }
        guard let bytes = try? FileSystem.readFile(snapshotPath), bytes.count > 12 else { return false }
        let body = Array(bytes.dropLast(4))
        var tail = ByteReader(Array(bytes.suffix(4)))
        guard CRC32C.checksum(body) == tail.u32() else {
            logger.warning("index snapshot is damaged; reading region footers instead", metadata: ["path": "\(snapshotPath)"])
            return false
        }
        var r = ByteReader(body)
        guard r.bytes(8) == CacheFormat.snapshotMagic, r.u32() == CacheFormat.version, r.u64() == regionSize,
              r.u32() == regions, let active = r.u32(), let wp = r.u32(), let next = r.u64(), active < regionCount, wp <= usablePages
        else { return false }
        var generations: [UInt64] = []
        for _ in 0..<regions { guard let g = r.u64() else { return false }; generations.append(g) }
        guard let activeCount = r.u64(), activeCount <= UInt64(usablePages) else { return false }
        var entries: [CacheFormat.FooterEntry] = []
        for _ in 0..<activeCount {
            guard let h = r.u64(), let l = r.u64(), let p = r.u32(), let n = r.u16(), let f = r.u16(), let d = r.u16() else { return false }
            entries.append(CacheFormat.FooterEntry(id: BlockID(high: h, low: l), pageInRegion: p, pages: n, flags: f, dataset: d))
        }
        guard let datasetCount = r.u32(), datasetCount <= 65536 else { return false }
        var datasets: [UInt16: DatasetBlocks] = [:]
        for _ in 0..<datasetCount {
            guard let tag = r.u16(), let b = r.u64(), let bytes = r.u64(), let ev = r.u64() else { return false }
            var d = DatasetBlocks()
            d.blocks = Int(b)
            d.bytes = bytes
            d.evictions = ev
            datasets[tag] = d
        }
        guard let count = r.u64(), UInt64(r.remaining) == count * 15 else { return false }
        var table = IndexTable(expectedBlocks: max(Int(count), index.capacity * 4 / 5))
        for _ in 0..<count {
            guard let t = r.u64(), let p = r.u32(), let n = r.u16(), let f = r.u8() else { return false }
            table.insert(tag: t, IndexEntry(page: p, pages: n, flags: f))
        }
        index = table
        stats.datasets = datasets
        for (i, g) in generations.enumerated() { regionGeneration[i] = g }
        activeRegion = active
        writePage = wp
        nextGeneration = next
        activeEntries = entries
        stats.recoveredFrom = "snapshot"
        let ms = Double(monotonicNanos() - start) / 1e6
        logger.info("cache recovered from snapshot", metadata: ["path": "\(config.path)", "blocks": "\(index.count)", "ms": "\(formatFixed(ms, decimals: 1))"])
        return true
    }

    // MARK: queries

    var blockCount: Int { lock.withLock { index.count } }

    func contains(_ id: BlockID) -> Bool { lock.withLock { index.lookup(id) != nil } }

    var snapshotStats: CacheDiskStats {
        lock.withLock {
            var s = stats
            s.blocks = index.count
            s.indexBytes = index.memoryBytes
            return s
        }
    }

    /// Bytes of block data cached (in 4 KiB pages), kept with the per-dataset counts rather than
    /// read off the index, which would hold the lock for a walk of the whole table.
    var bytesCached: UInt64 {
        lock.withLock { stats.datasets.values.reduce(0) { $0 + $1.bytes } }
    }

    func sync() { try? file.sync() }
}

/// A record header as a ranged read needs it: which record (generation, key) and the CRCs to check.
struct CachedHeader {
    var generation: UInt64
    var key: [UInt8]
    var dataLength: Int
    var dataCRC: UInt32
    var chunkShift: Int
    var chunkCRCs: [UInt32]
}

/// Headers by record page, at most `capacity` (about 1 KiB each for 4 MiB blocks); the oldest
/// goes first. An entry of an older generation than its region's is stale and never returned.
struct HeaderCache {
    private var entries: [UInt32: CachedHeader] = [:]
    private var ring: [UInt32] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(page: UInt32, generation: UInt64) -> CachedHeader? {
        guard let h = entries[page], h.generation == generation else { return nil }
        return h
    }

    mutating func put(page: UInt32, _ header: CachedHeader) {
        if entries.updateValue(header, forKey: page) != nil { return }
        if ring.count < capacity {
            ring.append(page)
        } else {
            entries.removeValue(forKey: ring[next])
            ring[next] = page
            next = (next + 1) % capacity
        }
    }

    mutating func remove(page: UInt32) { entries.removeValue(forKey: page) }
}
