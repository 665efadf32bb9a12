import Logging
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalSys

/// A block ready to send: where its bytes are in a borrowed buffer, and their CRC32C.
struct ServedBlock {
    var slot: IOSlot
    var dataOffset: Int
    var length: Int
    var crc: UInt32
}

/// The worker's read path, one step per method: find the store, look in the cache, fill a miss
/// once from the store, and hand back bytes that passed their checks.
final class BlockService: @unchecked Sendable {
    let stores: [String: any ObjectStore]
    let cache: BlockCache
    let pool: BufferPool
    let metadata: MetadataCache
    let fills = FillCoordinator()
    let metrics: WorkerMetrics
    let blockSize: UInt32
    let logger: Logger

    init(stores: [String: any ObjectStore], cache: BlockCache, pool: BufferPool, metadataTTL: Double, metrics: WorkerMetrics,
         blockSize: UInt32, logger: Logger) {
        self.stores = stores
        self.cache = cache
        self.pool = pool
        self.metadata = MetadataCache(ttlSeconds: metadataTTL)
        self.metrics = metrics
        self.blockSize = blockSize
        self.logger = logger
    }

    func store(_ name: String) throws(ShoalError) -> any ObjectStore {
        guard let s = stores[name] else {
            throw ShoalError(.unknownStore, "store '\(name)' is not configured on this worker (known: \(stores.keys.sorted().joined(separator: ", ")))")
        }
        return s
    }

    /// STAT: the object's current version, from the metadata cache or the store.
    func stat(_ request: StatRequest) throws(ShoalError) -> StatReply {
        try request.object.validate()
        let s = try store(request.object.store)
        if !request.revalidate, let v = metadata.get(request.object) {
            return StatReply(version: v, blockSize: blockSize)
        }
        let v = try s.head(bucket: request.object.bucket, key: request.object.key)
        metadata.put(request.object, v)
        return StatReply(version: v, blockSize: blockSize)
    }

    /// READ: returns the requested range in a borrowed buffer (the caller sends it and releases
    /// the buffer). Hit → disk read + checks; miss or bad block → one fill from the store.
    func read(_ request: ReadRequest) throws(ShoalError) -> ServedBlock {
        try request.validate()
        let s = try store(request.block.object.store)
        guard UInt64(request.block.blockSize) + UInt64(BlockCache.dataOffset) <= UInt64(pool.bufferSize) else {
            throw ShoalError(.badRequest, "block size \(request.block.blockSize) is larger than this worker's buffers (\(pool.bufferSize - BlockCache.dataOffset))")
        }
        guard let slot = pool.acquire() else { throw ShoalError(.timeout, "worker is overloaded: no I/O buffer came free in time") }
        do {
            let id = request.block.id
            let (length, crc) = try blockInSlot(request, id: id, store: s, slot: slot)
            let offset = Int(request.offset)
            let count = Int(request.length)
            let rangeCRC = (offset == 0 && count == length) ? crc
                : CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset + offset, count: count))
            return ServedBlock(slot: slot, dataOffset: BlockCache.dataOffset + offset, length: count, crc: rangeCRC)
        } catch {
            pool.release(slot)
            throw error
        }
    }

    /// Puts the whole block in `slot` at `BlockCache.dataOffset`: from the cache, or by filling it.
    private func blockInSlot(_ request: ReadRequest, id: BlockID, store: any ObjectStore, slot: IOSlot) throws(ShoalError) -> (Int, UInt32) {
        for attempt in 0..<3 {
            switch cache.read(key: request.block, id: id, into: slot) {
            case .hit(let length, let crc):
                metrics.hits.increment()
                return (length, crc)
            case .corrupt(let reason):
                metrics.corruptBlocks.increment()
                logger.warning("dropped a bad cached block; refilling it", metadata: ["block": "\(request.block)", "reason": "\(reason)"])
            case .miss:
                break
            }
            if attempt == 0 { metrics.misses.increment() }
            switch fills.join(id) {
            case .leader:
                do {
                    let result = try fill(request, id: id, store: store, slot: slot)
                    fills.finish(id, error: nil)
                    return result
                } catch {
                    fills.finish(id, error: error)
                    throw error
                }
            case .followed(let error):
                if let error { throw error }
                // The leader cached it: read it from the cache on the next pass.
            }
        }
        // The block would not stay in the cache (it is being evicted as fast as it is filled):
        // fetch it for this reader alone.
        return try fill(request, id: id, store: store, slot: slot, admit: false)
    }

    /// GETs the block with If-Match into the buffer, checksums it and appends it to the cache.
    private func fill(_ request: ReadRequest, id: BlockID, store: any ObjectStore, slot: IOSlot, admit: Bool = true) throws(ShoalError) -> (Int, UInt32) {
        let key = request.block
        let length = Int(BlockLayout(blockSize: UInt64(key.blockSize)).blockLength(index: key.index, objectSize: request.objectSize))
        metrics.fillsInFlight.increment()
        defer { metrics.fillsInFlight.decrement() }
        do {
            _ = try store.get(bucket: key.object.bucket, key: key.object.key, offset: key.index * UInt64(key.blockSize),
                              length: length, ifMatch: key.etag, into: slot.base + BlockCache.dataOffset)
        } catch {
            if error.code == .preconditionFailed || error.code == .notFound { metadata.invalidate(key.object) }
            throw error
        }
        metrics.bytesFilled.increment(by: Int64(length))
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + BlockCache.dataOffset, count: length))
        if admit {
            do {
                try cache.insert(key: key, id: id, slot: slot, length: length, crc: crc)
            } catch {
                // Serving the reader matters more than caching: log and go on.
                metrics.error(error.code)
                logger.warning("could not cache a filled block", metadata: ["block": "\(key)", "error": "\(error)"])
            }
        }
        return (length, crc)
    }
}
