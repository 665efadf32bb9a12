import Logging
import ShoalCore
import ShoalIO
import ShoalSys

/// Where regions, pages and footers lie in a cache file (docs/FORMAT.md).
struct RegionLayout {
    let regionSize: UInt64
    let regionCount: UInt32
    let pagesPerRegion: UInt32
    /// Pages of each region that records may use (the rest holds the footer).
    let usablePages: UInt32
    let footerReserve: Int

    init(regionSize: UInt64, regionCount: UInt32) {
        self.regionSize = regionSize
        self.regionCount = regionCount
        pagesPerRegion = UInt32(regionSize / 4096)
        footerReserve = CacheFormat.footerReserve(regionSize: regionSize)
        usablePages = pagesPerRegion - UInt32(footerReserve / 4096)
    }

    func regionStart(_ r: UInt32) -> UInt64 { CacheFormat.dataStart + UInt64(r) * regionSize }
    func byteOffset(page: UInt32) -> UInt64 { CacheFormat.dataStart + UInt64(page) * 4096 }
    func region(ofPage page: UInt32) -> UInt32 { page / pagesPerRegion }
    var footerOffset: UInt64 { UInt64(usablePages) * 4096 }
}

/// What readers, the region writer and the region cleaner of one disk share: the cache file, the
/// index, each region's generation, the counters and the failure state, under one lock.
final class DiskState: @unchecked Sendable {
    let file: FileHandle
    let layout: RegionLayout
    let path: String
    let logger: Logger
    let stallNanos: UInt64

    /// Guards everything below.
    let lock = ConditionLock()
    var index: IndexTable
    var regionGeneration: [UInt64]
    var nextGeneration: UInt64 = 1
    /// Record headers recently read for ranged reads, by page: a ranged read of a block whose
    /// header is here reads only its chunks (one I/O instead of two).
    var headers = HeaderCache(capacity: 8192)
    var stats = CacheDiskStats()

    init(file: FileHandle, layout: RegionLayout, path: String, index: IndexTable, stallNanos: UInt64, logger: Logger) {
        self.file = file
        self.layout = layout
        self.path = path
        self.index = index
        self.stallNanos = stallNanos
        self.logger = logger
        regionGeneration = Array(repeating: 0, count: Int(layout.regionCount))
    }

    /// Counts a block in (+1) or out (-1) of its dataset. Lock held.
    func count(_ tag: UInt16, _ pages: UInt16, _ sign: Int, evicted: Bool = false) {
        var d = stats.datasets[tag] ?? DatasetBlocks()
        d.blocks += sign
        let bytes = UInt64(max(Int(pages) - 1, 0)) * 4096
        d.bytes = sign > 0 ? d.bytes + bytes : (d.bytes >= bytes ? d.bytes - bytes : 0)
        if evicted { d.evictions += 1 }
        stats.datasets[tag] = d
    }

    /// Hands out the next region generation (generations only grow, so the newest region is known).
    func takeGeneration() -> UInt64 {
        lock.withLock {
            defer { nextGeneration += 1 }
            return nextGeneration
        }
    }

    func generation(ofRegion r: UInt32) -> UInt64 { lock.withLock { regionGeneration[Int(r)] } }

    /// Takes the disk out of service: its blocks become misses and nothing more is written to it.
    func fail(_ reason: String) {
        let first: Bool = lock.withLock {
            guard stats.failure == nil else { return false }
            stats.failure = reason
            return true
        }
        if first { logger.error("cache disk taken out of service", metadata: ["path": "\(path)", "reason": "\(reason)"]) }
    }

    var isFailed: Bool { lock.withLock { stats.failure != nil } }

    /// Runs a read; an I/O error, or a read slower than the stall timeout, takes the disk out of
    /// service. nil after an error.
    func timedRead<T>(_ body: () throws(SysError) -> T) -> T? {
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

    /// Writes `count` bytes of `slot` at `offset`; an error or a stall takes the disk out of service.
    func write(_ slot: IOSlot, count: Int, at offset: UInt64) throws(ShoalError) {
        let start = monotonicNanos()
        do { try slot.write(file: file, at: offset, count: count) } catch {
            fail("write error: \(error)")
            throw ShoalError(.internal, "cache write to '\(path)' failed: \(error)")
        }
        let elapsed = monotonicNanos() - start
        if elapsed > stallNanos { fail("a write took \(elapsed / 1_000_000) ms (limit \(stallNanos / 1_000_000) ms)") }
    }
}

/// A region that takes appends: the active one, or one the cleaner has made ready (blocks it
/// kept already at its front), or a full one waiting for its footer.
struct OpenRegion {
    var region: UInt32
    var generation: UInt64
    var writePage: UInt32
    var entries: [CacheFormat.FooterEntry]
}
