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

    public init(path: String, capacity: UInt64, regionSize: UInt64 = 256 << 20) {
        self.path = path
        self.capacity = capacity
        self.regionSize = regionSize
    }
}

/// The outcome of a cache read.
public enum CacheRead: Sendable, Equatable {
    /// The block is in the buffer at `CacheDisk.dataOffset`; its length and CRC32C.
    case hit(length: Int, crc: UInt32)
    case miss
    /// The block was on disk but failed its checks; it has been dropped.
    case corrupt(reason: String)
}

/// A region log in one file: blocks appended 4 KiB-aligned with a header carrying the full block
/// key, length and CRC32C; the oldest region is reused when the file is full.
final class CacheDisk: @unchecked Sendable {
    struct Location {
        var region: UInt32
        var offset: UInt64  // absolute, in the file
        var length: UInt32
        var generation: UInt64
    }

    let config: CacheDiskConfig
    let file: FileHandle
    let regionSize: UInt64
    let regionCount: UInt32
    private let lock = ConditionLock()
    private var index: [BlockID: Location] = [:]
    private var regionBlocks: [[BlockID]]
    private var regionGeneration: [UInt64]
    private var activeRegion: UInt32 = 0
    private var writeOffset: UInt64 = 0  // within the active region
    private var nextGeneration: UInt64 = 1
    private(set) var bytesCached: UInt64 = 0
    private let logger: Logger

    static let fileName = "shoal-cache.dat"

    init(config: CacheDiskConfig, logger: Logger) throws(ShoalError) {
        self.config = config
        self.logger = logger
        let isDevice = FileSystem.isBlockDevice(config.path)
        let filePath = isDevice ? config.path : config.path + "/" + CacheDisk.fileName
        if !isDevice {
            guard FileSystem.isDirectory(config.path) else {
                throw ShoalError(.badRequest, "cache folder '\(config.path)' does not exist (create it or fix the path)")
            }
            guard FileSystem.isWritable(config.path) else {
                throw ShoalError(.badRequest, "cache folder '\(config.path)' is not writable by this user")
            }
        }
        guard config.regionSize >= 1 << 20, config.regionSize % UInt64(CacheFormat.alignment) == 0 else {
            throw ShoalError(.badRequest, "region size \(config.regionSize) must be at least 1 MiB and a multiple of 4 KiB")
        }
        let regions = config.capacity / config.regionSize
        guard regions >= 2 else {
            throw ShoalError(.badRequest, "cache '\(config.path)': capacity \(ByteSize.format(config.capacity)) must hold at least two regions of \(ByteSize.format(config.regionSize))")
        }
        regionSize = config.regionSize
        regionCount = UInt32(regions)
        let fileLength = CacheFormat.dataStart + UInt64(regions) * regionSize
        do {
            file = try FileHandle.open(filePath, isDevice ? [.direct] : [.create, .direct])
        } catch {
            if error.errno == EINVAL {
                throw ShoalError(.badRequest, "cache '\(config.path)' is on a filesystem without O_DIRECT (tmpfs?); use a folder on a real disk")
            }
            throw ShoalError(.badRequest, "cannot open cache file \(filePath): \(error)")
        }
        regionBlocks = Array(repeating: [], count: Int(regions))
        regionGeneration = Array(repeating: 0, count: Int(regions))

        let scratch = AlignedScratch(size: CacheFormat.headerSize)
        let existing: CacheFormat.SuperblockState
        do {
            let size = try file.size()
            if isDevice && size < fileLength {
                throw ShoalError(.badRequest, "device \(filePath) has \(ByteSize.format(size)), less than the configured capacity")
            }
            var superblockRead = 0
            if size >= CacheFormat.dataStart {
                superblockRead = try file.read(into: scratch.base, count: CacheFormat.headerSize, at: 0)
            }
            existing = superblockRead == CacheFormat.headerSize
                ? CacheFormat.decodeSuperblock(UnsafeRawBufferPointer(start: scratch.base, count: CacheFormat.headerSize)) : .empty
            if !isDevice {
                let current = try file.size()
                if current < fileLength {
                    let (free, _) = try FileSystem.space(config.path)
                    guard free >= fileLength - current else {
                        throw ShoalError(.badRequest, "cache folder '\(config.path)' has \(ByteSize.format(free)) free, less than the \(ByteSize.format(fileLength - current)) its capacity needs")
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
            recover(scratch: scratch, regions: rc)
        } else {
            if existing != .empty {
                logger.warning("cache file has another layout or format; starting it empty", metadata: ["path": "\(filePath)", "found": "\(existing)"])
            }
            try writeSuperblock(scratch: scratch)
            startRegion(0)
        }
    }

    private func writeSuperblock(scratch: AlignedScratch) throws(ShoalError) {
        let sb = CacheFormat.encodeSuperblock(regionSize: regionSize, regionCount: regionCount)
        CacheFormat.memsetZero(scratch.base, CacheFormat.headerSize)
        sb.withUnsafeBytes { scratch.base.copyMemory(from: $0.baseAddress!, byteCount: sb.count) }
        do {
            // Invalidate the first header of every region so an old file's records are not taken as current.
            let zero = AlignedScratch(size: CacheFormat.headerSize)
            for r in 0..<regionCount {
                try file.write(zero.base, count: CacheFormat.headerSize, at: regionStart(r))
            }
            try file.write(scratch.base, count: CacheFormat.headerSize, at: 0)
            try file.sync()
        } catch {
            throw ShoalError(.internal, "cannot initialise cache file in '\(config.path)': \(error)")
        }
    }

    func regionStart(_ r: UInt32) -> UInt64 { CacheFormat.dataStart + UInt64(r) * regionSize }

    /// Rebuilds the index by walking each region's records while their headers are valid and
    /// carry the region's generation. Data is checked on every read, so a torn write is caught then.
    private func recover(scratch: AlignedScratch, regions: UInt32) {
        let start = monotonicNanos()
        var maxGeneration: UInt64 = 0
        var newest: (UInt32, UInt64, UInt64)?  // region, generation, end offset
        for r in 0..<regions {
            var offset: UInt64 = 0
            var generation: UInt64 = 0
            while offset + UInt64(CacheFormat.headerSize) <= regionSize {
                guard (try? file.read(into: scratch.base, count: CacheFormat.headerSize, at: regionStart(r) + offset)) == CacheFormat.headerSize,
                      let h = CacheFormat.readHeader(scratch.base) else { break }
                if generation == 0 { generation = h.generation }
                // Generations start at 1: a 0 can only be a stray or hand-made header.
                guard h.generation != 0, h.generation == generation, let key = BlockKey(encoded: h.key) else { break }
                let length = UInt64(CacheFormat.recordLength(dataLength: Int(h.dataLength)))
                guard offset + length <= regionSize else { break }
                let id = key.id
                if let old = index[id] { forget(id, old) }
                index[id] = Location(region: r, offset: regionStart(r) + offset, length: h.dataLength, generation: generation)
                regionBlocks[Int(r)].append(id)
                bytesCached += UInt64(h.dataLength)
                offset += length
            }
            regionGeneration[Int(r)] = generation
            maxGeneration = max(maxGeneration, generation)
            if generation > 0 && generation >= (newest?.1 ?? 0) { newest = (r, generation, offset) }
        }
        nextGeneration = maxGeneration + 1
        if let (r, _, end) = newest {
            activeRegion = r
            writeOffset = end
        } else {
            startRegion(0)
        }
        let ms = Double(monotonicNanos() - start) / 1e6
        logger.info("cache recovered", metadata: ["path": "\(config.path)", "blocks": "\(index.count)", "ms": "\(formatFixed(ms, decimals: 1))"])
    }

    private func forget(_ id: BlockID, _ loc: Location) {
        index[id] = nil
        bytesCached -= UInt64(loc.length)
    }

    /// Starts writing region `r` afresh: its old blocks leave the index. Lock held.
    private func startRegion(_ r: UInt32) {
        for id in regionBlocks[Int(r)] {
            if let loc = index[id], loc.region == r { forget(id, loc) }
        }
        regionBlocks[Int(r)] = []
        regionGeneration[Int(r)] = nextGeneration
        nextGeneration += 1
        activeRegion = r
        writeOffset = 0
    }

    var blockCount: Int { lock.withLock { index.count } }

    func contains(_ id: BlockID) -> Bool { lock.withLock { index[id] != nil } }

    /// Reads a block into `slot` (header at 0, data at `CacheFormat.headerSize`) and checks it.
    func read(key: BlockKey, id: BlockID, into slot: IOSlot) -> CacheRead {
        guard let loc = lock.withLock({ index[id] }) else { return .miss }
        let count = CacheFormat.recordLength(dataLength: Int(loc.length))
        guard count <= slot.capacity else { return .miss }
        let n: Int
        do { n = try slot.read(file: file, at: loc.offset, count: count) } catch {
            return drop(id, loc, reason: "disk read failed: \(error)")
        }
        guard n == count, let header = CacheFormat.readHeader(slot.base) else {
            return drop(id, loc, reason: "record header unreadable")
        }
        // The region may have been reused while the read was in flight: the generation and the
        // full key in the header say whether these are still our bytes.
        guard header.generation == loc.generation, header.key == key.encoded, header.dataLength == loc.length else {
            return drop(id, loc, reason: "record no longer holds this block")
        }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: Int(loc.length)))
        guard crc == header.dataCRC else {
            return drop(id, loc, reason: "CRC32C mismatch (stored \(header.dataCRC), computed \(crc))")
        }
        return .hit(length: Int(loc.length), crc: crc)
    }

    private func drop(_ id: BlockID, _ loc: Location, reason: String) -> CacheRead {
        lock.withLock {
            if let current = index[id], current.offset == loc.offset, current.generation == loc.generation { forget(id, current) }
        }
        return .corrupt(reason: reason)
    }

    /// Appends a block whose data is in `slot` at `CacheFormat.headerSize`; writes the header in
    /// front of it and the whole record with one O_DIRECT write.
    func insert(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32) throws(ShoalError) {
        let encoded = key.encoded
        guard encoded.count <= CacheFormat.maxKeyBytes else { throw ShoalError(.tooLarge, "block key too long to cache") }
        let count = CacheFormat.recordLength(dataLength: length)
        guard UInt64(count) <= regionSize, count <= slot.capacity else {
            throw ShoalError(.tooLarge, "block of \(length) bytes does not fit a region of \(regionSize)")
        }
        // Reserve space under the lock; write outside it.
        let (region, offset, generation): (UInt32, UInt64, UInt64) = lock.withLock {
            if writeOffset + UInt64(count) > regionSize {
                startRegion((activeRegion + 1) % regionCount)
            }
            let r = (activeRegion, regionStart(activeRegion) + writeOffset, regionGeneration[Int(activeRegion)])
            writeOffset += UInt64(count)
            return r
        }
        CacheFormat.writeHeader(into: slot.base, key: encoded, generation: generation, dataLength: UInt32(length), dataCRC: crc)
        // Zero the padding so the on-disk record is deterministic.
        let pad = count - CacheFormat.headerSize - length
        if pad > 0 { CacheFormat.memsetZero(slot.base + CacheFormat.headerSize + length, pad) }
        do { try slot.write(file: file, at: offset, count: count) } catch {
            throw ShoalError(.internal, "cache write to '\(config.path)' failed: \(error)")
        }
        lock.withLock {
            // If the region was recycled while we wrote, the record is already gone.
            guard regionGeneration[Int(region)] == generation else { return }
            if let old = index[id] { forget(id, old) }
            index[id] = Location(region: region, offset: offset, length: UInt32(length), generation: generation)
            regionBlocks[Int(region)].append(id)
            bytesCached += UInt64(length)
        }
    }

    /// Forgets a block (the data stays until its region is reused).
    func remove(_ id: BlockID) {
        lock.withLock { if let loc = index[id] { forget(id, loc) } }
    }

    func sync() { try? file.sync() }
}

/// A small 4 KiB-aligned buffer for O_DIRECT metadata I/O.
final class AlignedScratch {
    let base: UnsafeMutableRawPointer
    init(size: Int) {
        var p: UnsafeMutableRawPointer?
        posix_memalign(&p, CacheFormat.alignment, size)
        base = p!
        CacheFormat.memsetZero(base, size)
    }
    deinit { free(base) }
}
