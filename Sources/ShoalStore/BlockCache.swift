import Logging
import ShoalCore
import ShoalSys

/// The NVMe cache of one worker: one region log per cache disk; a block lives on the disk its ID
/// picks. Reads land in a registered buffer and are checked (key, generation, CRC32C) every time.
public final class BlockCache: @unchecked Sendable {
    private let disks: [CacheDisk]
    /// Where a block's data starts in a slot after a read, and where a fill must put it.
    public static let dataOffset = CacheFormat.headerSize

    public init(disks configs: [CacheDiskConfig], logger: Logger) throws(ShoalError) {
        guard !configs.isEmpty else { throw ShoalError(.badRequest, "no cache folder configured") }
        var disks: [CacheDisk] = []
        for c in configs { disks.append(try CacheDisk(config: c, logger: logger)) }
        self.disks = disks
    }

    private func disk(for id: BlockID) -> CacheDisk { disks[Int(id.high % UInt64(disks.count))] }

    public func read(key: BlockKey, id: BlockID, into slot: IOSlot) -> CacheRead {
        disk(for: id).read(key: key, id: id, into: slot)
    }

    public func contains(_ id: BlockID) -> Bool { disk(for: id).contains(id) }

    public func insert(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32) throws(ShoalError) {
        try disk(for: id).insert(key: key, id: id, slot: slot, length: length, crc: crc)
    }

    public func remove(_ id: BlockID) { disk(for: id).remove(id) }

    public var blockCount: Int { disks.reduce(0) { $0 + $1.blockCount } }
    public var bytesCached: UInt64 { disks.reduce(0) { $0 + $1.bytesCached } }
    public var capacity: UInt64 { disks.reduce(0) { $0 + UInt64($1.regionCount) * $1.regionSize } }

    /// Flushes each cache file (on clean shutdown).
    public func sync() { disks.forEach { $0.sync() } }

    /// The path of each disk's cache file (tests corrupt them on purpose).
    public var filePaths: [String] { disks.map { $0.file.path } }
}
