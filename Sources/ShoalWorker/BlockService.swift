import Logging
import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalIO
import ShoalSys
import Synchronization

/// A block's bytes in a leased buffer, ready to send: the requested range's place and CRC32C.
/// A block just fetched from the store carries the fill to finish once the reply is on its way.
struct FilledRange: Sendable {
    var dataOffset: Int
    var length: Int
    var crc: UInt32
    var fill: PendingFill?
    /// Where the block came from (said in READ_NODATA to a warm).
    var origin: BlockOrigin = .cache
}

/// What a fill thread found for a READ: the block in the buffer, or the GET to start.
enum FillStart {
    case ready(FilledRange)
    case fetch(@Sendable () -> Void)
}

/// A fetched block not yet written to the cache (the reader is answered first); its filler
/// holds the block's single-flight slot until `BlockService.finishFill`.
struct PendingFill: Sendable {
    var key: BlockKey
    var id: BlockID
    var length: Int
    var crc: UInt32
    /// Filled for a fill-only READ (a warm, or a hand-over push): cached past admission.
    var warm = false
    /// The chunk CRCs computed with `crc` (`BlockCache.checksums`), for the cache's record.
    var chunkCRCs: [UInt32]?
    /// Whether this reader led the block's fill (`FillCoordinator`), so finishing it lets the
    /// readers waiting on it go; a warm that copied another reader's fill caches the block too,
    /// but ends no flight.
    var leader = true
}

/// The worker's read path, one step per method: find the store, look in the cache, fill a miss
/// once from the store, and hand back bytes that passed their checks.
final class BlockService: @unchecked Sendable {
    let stores: [String: any ObjectStore]
    let cache: BlockCache
    let pool: BufferPool
    let metadata: MetadataCache
    let fills = FillCoordinator()
    /// LIST jobs running now (on fill threads), at most `maxListings`.
    static let maxListings = 4
    private let listings = ConditionLock()
    private var runningListings = 0
    let datasets = DatasetStats()
    let metrics: WorkerMetrics
    let blockSize: UInt32
    let admission: AdmissionPolicy
    /// Cache only a stable subset of a dataset larger than the cache (shuffled epochs).
    let thrashGuard: Bool
    /// The DRAM tier's bookkeeping over the pool's tier buffers, its pages (nil: no tier).
    let tier: MemoryTier?
    /// The DRAM tier's smallest slot: a 10 KiB object takes 16 KiB of memory, not a block's buffer.
    static let smallestTierSlot = 16 << 10
    /// Benchmark switches: filled blocks go to the DRAM tier instead of the cache disks
    /// (`serveFromMemory`), and READs are answered without their data (`answerWithoutData`).
    let serveFromMemory: Bool
    let answerWithoutData: Bool
    /// While the store is unreachable, STAT answers with the last version known (flagged stale).
    let serveStaleOnOutage: Bool
    /// GETs one block is split into when few blocks are missing (1: never split).
    var fillParts = 4
    /// Where the cluster's view comes from (members file or etcd) and this worker's id in it
    /// (nil: no view; every READ served).
    var members: (source: any MembershipSource, id: String)?
    /// Asks a block's previous owner before the store, for a while after a view change.
    var handover: Handover?
    let logger: Logger

    init(stores: [String: any ObjectStore], cache: BlockCache, pool: BufferPool, metadataTTL: Double, metrics: WorkerMetrics,
         blockSize: UInt32, admission: AdmissionPolicy, thrashGuard: Bool = false, serveFromMemory: Bool = false,
         answerWithoutData: Bool = false, serveStaleOnOutage: Bool = true, logger: Logger) {
        self.serveStaleOnOutage = serveStaleOnOutage
        self.serveFromMemory = serveFromMemory
        self.tier = pool.tierSlots > 0 ? MemoryTier(pages: pool.tierSlots, pageSize: pool.bufferSize, smallestSlot: BlockService.smallestTierSlot,
                                                           admitAfter: serveFromMemory ? 1 : 2) : nil
        self.answerWithoutData = answerWithoutData
        self.admission = admission
        self.thrashGuard = thrashGuard
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

    /// STAT from the metadata cache alone: nil when the store must be asked (a fill thread's job).
    func cachedStat(_ request: StatRequest) throws(ShoalError) -> StatReply? {
        try request.object.validate()
        _ = try store(request.object.store)
        guard !request.revalidate, let v = metadata.get(request.object) else { return nil }
        return StatReply(version: v, blockSize: blockSize)
    }

    /// STAT: the object's current version, from the metadata cache or the store. When the store
    /// cannot be reached (not when it answers), the last version known is served, flagged stale.
    func stat(_ request: StatRequest) throws(ShoalError) -> StatReply {
        try request.object.validate()
        let s = try store(request.object.store)
        if !request.revalidate, let v = metadata.get(request.object) {
            return StatReply(version: v, blockSize: blockSize)
        }
        do throws(ShoalError) {
            let v = try s.head(bucket: request.object.bucket, key: request.object.key)
            guard !v.etag.isEmpty else {
                throw ShoalError(.internal, "store '\(s.name)' gave \(request.object) no version")
            }
            metadata.put(request.object, v)
            return StatReply(version: v, blockSize: blockSize)
        } catch {
            // "Not found" is an answer: the object is gone, and no outage may bring it back.
            if error.code == .notFound { metadata.invalidate(request.object) }
            guard error.code == .storeUnavailable || error.code == .timeout, serveStaleOnOutage,
                  let last = metadata.lastKnown(request.object)
            else { throw error }
            metrics.staleVersionsServed.increment()
            if metadata.shouldReportStale(request.object, intervalNanos: 60_000_000_000) {
                logger.warning("store unreachable: serving the last known version", metadata: [
                    "object": "\(request.object)", "etag": "\(last.etag)", "size": "\(last.size)", "error": "\(error.message)",
                ])
            }
            return StatReply(version: last, blockSize: blockSize, stale: true)
        }
    }

    /// LIST: one page of the store's listing. The versions it names go to the metadata cache, so
    /// opening what was just listed costs no HEAD.
    /// At most `maxListings` run at once (each holds a fill thread while the store answers); one
    /// more is refused, so listings cannot starve fills.
    func list(_ request: ListRequest) throws(ShoalError) -> ObjectListing {
        let admitted = listings.withLock { () -> Bool in
            guard runningListings < BlockService.maxListings else { return false }
            runningListings += 1
            return true
        }
        guard admitted else {
            throw ShoalError(.storeUnavailable, "this worker is running \(BlockService.maxListings) listings already; try again")
        }
        defer { listings.withLock { runningListings -= 1 } }
        let s = try store(request.store)
        var page = try s.list(bucket: request.bucket, prefix: request.prefix, continuation: request.continuation)
        if page.entries.count > ListRequest.maxEntries {
            throw ShoalError(.internal, "store '\(s.name)' gave a listing page of \(page.entries.count) keys; at most \(ListRequest.maxEntries) fit a reply")
        }
        if let token = page.continuation, token.utf8.count > ListRequest.maxContinuation {
            throw ShoalError(.internal, "store '\(s.name)' gave a continuation token of \(token.utf8.count) bytes; at most \(ListRequest.maxContinuation) fit a reply")
        }
        // Objects whose names or versions the wire cannot carry (nor a READ name) are left out.
        page.entries.removeAll {
            $0.version.etag.isEmpty || $0.version.etag.utf8.count > WireLimits.maxEtag || $0.key.isEmpty || $0.key.utf8.count > WireLimits.maxKey
        }
        for e in page.entries {
            metadata.put(ObjectRef(store: request.store, bucket: request.bucket, key: e.key), e.version)
        }
        return page
    }

    /// Checks a READ before anything is done for it: its fields, its store, and that its block
    /// fits this worker's buffers.
    func check(_ request: ReadRequest) throws(ShoalError) {
        try request.validate()
        if request.epoch != 0, let members { try checkOwner(request, members.source, members.id) }
        _ = try store(request.storeName)
        guard UInt64(request.blockSize) + UInt64(BlockCache.dataOffset) <= UInt64(pool.bufferSize) else {
            throw ShoalError(.badRequest, "block size \(request.blockSize) is larger than this worker's buffers (\(pool.bufferSize - BlockCache.dataOffset))")
        }
    }

    /// The CRC32C of the requested range of a block whose whole-block CRC is `crc`, in `data`.
    /// A READ routed by an older view than this worker's must be for a block it owns or falls
    /// back for in its view; one routed by a newer view makes it read its members file now (a
    /// watched source, etcd, is current already: a READ never makes the worker wait on it).
    private func checkOwner(_ request: ReadRequest, _ source: any MembershipSource, _ id: String) throws(ShoalError) {
        var (view, placement) = source.current(force: false)
        if request.epoch > view.epoch, !source.isWatched { (view, placement) = source.current(force: true) }
        guard request.epoch < view.epoch, let me = view.index(of: id) else { return }
        let (owner, fallback) = placement.owners(of: request.placementID)
        guard owner != me && fallback != me else { return }
        throw ShoalError(.notOwner, "worker \(id) does not own block \(request.index) of \(request.block.object) in view epoch \(view.epoch); "
                         + "the READ was routed by epoch \(request.epoch): ask \(source.name) again")
    }

    static func rangeCRC(_ request: ReadRequest, blockLength: Int, blockCRC: UInt32, data: UnsafeRawPointer) -> UInt32 {
        let offset = Int(request.offset)
        let count = Int(request.length)
        return (offset == 0 && count == blockLength) ? blockCRC
            : CRC32C.checksum(UnsafeRawBufferPointer(start: data + offset, count: count))
    }

    /// A cached block failed its checks and was dropped (it is filled again).
    func droppedBadBlock(_ key: BlockKey, _ reason: String) {
        metrics.corruptBlocks.increment()
        logger.warning("dropped a bad cached block; refilling it", metadata: ["block": "\(key)", "reason": "\(reason)"])
    }

    /// Whether this worker holds the block of `request` (a probe): in its cache, or in the DRAM
    /// tier where filled blocks go only there (`serveFromMemory`).
    func holds(_ request: ReadRequest) -> Bool {
        if serveFromMemory, let tier { return request.keyBytes.withUnsafeBytes { tier.holds(request.id, key: $0) } }
        return cache.contains(request.id)
    }

    /// Counts a READ served from the cache (on an io shard); the shard reports its dataset
    /// counts in batches (`datasets.record`).
    /// A warm's fill-only READs are not reads: they count as fills, never as hits or misses.
    func recordHit(_ request: ReadRequest) {
        guard !request.isFillOnly else { return }
        metrics.hits.increment()
        metrics.bytesServed.increment(by: Int64(request.length))
    }

    func objectBlocks(_ request: ReadRequest) -> Int {
        Int(BlockLayout(blockSize: UInt64(request.blockSize)).blockCount(objectSize: request.objectSize))
    }

    /// READ, on a fill thread: looks for the block once more (the cache, or a fill of it that
    /// another reader has under way) and puts it in `slot` at `BlockCache.dataOffset`; or, when
    /// this reader must fetch it, returns the GET to start (once the caller has put its lease
    /// away). The fetch then reports with `progress` (bytes of the block in place, from its
    /// start, checked against the version) and ends with `done`, on the store's fetch thread.
    /// A warm's fill may instead be fetched here and come back ready (`fetch`).
    /// A returned fill is finished with `finishFill` once the reply has been sent (a warm's: once
    /// it is fetched); on an error nothing is left to finish. The shard has checked the request
    /// (`check`) before.
    /// `claimed`: the caller holds a warm's GET on a fill thread (`claimWarmFetch`) for this
    /// fill-only READ, and releases it after: its fill is fetched here whatever the count.
    func startRead(_ request: ReadRequest, slot: IOSlot, claimed: Bool = false, progress: @escaping @Sendable (Int) -> Void,
                   done: @escaping @Sendable (Result<FilledRange, ShoalError>) -> Void) throws(ShoalError) -> FillStart {
        let s = try store(request.storeName)
        let id = request.id
        let data = slot.base + BlockCache.dataOffset
        let range = Int(request.offset)..<Int(request.offset) + Int(request.length)
        for attempt in 0..<3 {
            if let (length, crc) = cached(request, id: id, slot: slot, range: range) {
                return .ready(try served(request, object: request.block.object, length: length, crc: crc, data: data, fill: nil, origin: .cache))
            }
            if request.isCachedOnly {
                // A peer asking before its store: nothing is filled for it, and it is not a miss here.
                throw ShoalError(.notFound, "block \(request.index) of \(request.block.object) is not cached on this worker")
            }
            if attempt == 0 && !request.isFillOnly { metrics.misses.increment() }
            switch fills.join(id, copy: { bytes, length, _ in data.copyMemory(from: bytes, byteCount: length) }) {
            case .leader:
                let plan: FetchPlan
                do throws(ShoalError) { plan = try fetchPlan(request, into: data, leader: true) } catch {
                    fills.finish(id, error: error)
                    throw error
                }
                return try fetch(plan, store: s, claimed: claimed, progress: progress, done: done)
            case .copied(let length, let crc):
                // Served from the worker's memory, as a reader that waited for the fill and then
                // read the cache was: a hit (after its miss), not a store GET. A warm answers only
                // once the block is cached, and the reader it copied from may not cache it
                // (admission), so it caches the copy itself.
                guard request.isFillOnly else {
                    metrics.hits.increment()
                    return .ready(try served(request, object: request.block.object, length: length, crc: crc, data: data, fill: nil, origin: .cache))
                }
                let copy = PendingFill(key: request.block, id: id, length: length, crc: crc, warm: true, leader: false)
                return .ready(try served(request, object: copy.key.object, length: length, crc: crc, data: data, fill: copy, origin: .cache))
            case .followed(let error):
                if let error { throw error }
                // The leader cached it: read it from the cache on the next pass.
            }
        }
        // The block would not stay in the cache (it is being evicted as fast as it is filled):
        // fetch it for this reader alone.
        return try fetch(try fetchPlan(request, into: data, leader: false), store: s, claimed: claimed, progress: progress, done: done)
    }

    /// The block from the cache (or, with `serveFromMemory`, the DRAM tier) into `slot`: its
    /// length and CRC32C; nil on a miss (a bad block is dropped on the way).
    private func cached(_ request: ReadRequest, id: BlockID, slot: IOSlot, range: Range<Int>) -> (Int, UInt32)? {
        if serveFromMemory {
            // A reader that followed a fill into the tier copies the block from there.
            guard let tier, let hit = request.keyBytes.withUnsafeBytes({ tier.lookup(id, key: $0) }) else { return nil }
            defer { tier.unpin(hit.slot) }
            slot.base.advanced(by: BlockCache.dataOffset).copyMemory(from: pool.tierSlot(hit.slot, of: tier).base + BlockCache.dataOffset, byteCount: hit.length)
            if !request.isFillOnly { metrics.hits.increment() }
            return (hit.length, hit.crc)
        }
        switch cache.read(key: request.block, id: id, into: slot, range: range) {
        case .hit(let length, let crc):
            if !request.isFillOnly { metrics.hits.increment() }
            return (length, crc)
        case .corrupt(let reason):
            droppedBadBlock(request.block, reason)
            return nil
        case .miss:
            return nil
        }
    }

    /// The requested range of a block that is whole in the buffer at `data`, to send; never a
    /// byte that was not read for this block.
    /// `object` is the request's, decoded by the caller (which has it already on a fill).
    private func served(_ request: ReadRequest, object: ObjectRef, length: Int, crc: UInt32, data: UnsafeRawPointer, fill: PendingFill?,
                        origin: BlockOrigin) throws(ShoalError) -> FilledRange {
        let offset = Int(request.offset)
        let count = Int(request.length)
        guard length == request.expectedLength, offset + count <= length else {
            throw ShoalError(.internal, "block \(request.block) holds \(length) bytes where \(request.expectedLength) were expected; not served")
        }
        if request.isFillOnly {
            // Not a read, but the dataset is named (its cached bytes show under its name).
            datasets.record(object, hits: 0, misses: 0, served: 0, filled: fill == nil ? 0 : length, objectBlocks: objectBlocks(request))
        } else {
            datasets.record(object, hit: fill == nil, served: count, filled: fill == nil ? 0 : length, objectBlocks: objectBlocks(request))
            metrics.bytesServed.increment(by: Int64(count))
        }
        return FilledRange(dataOffset: BlockCache.dataOffset + offset, length: count,
                           crc: BlockService.rangeCRC(request, blockLength: length, blockCRC: crc, data: data), fill: fill, origin: origin)
    }

    /// A fill this reader is to make: the whole block, with If-Match, into the buffer at `address`.
    private struct FetchPlan: Sendable {
        var request: ReadRequest
        var length: Int
        /// GETs the block is split into (`fillParts`, or 1).
        var parts: Int
        var address: UInt
        /// Whether this reader leads the block's fill (`FillCoordinator`).
        var leader: Bool
        /// The request's block key, decoded once (each decoding allocates its names).
        var key: BlockKey
        var data: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: address)! }
    }

    /// Checks a fill before the store is asked. The worker's own knowledge of a version beats the
    /// client's: a size that disagrees with it is refused. (A hit needs no such check: the size
    /// is part of the key, and was the store's when the block was filled.)
    private func fetchPlan(_ request: ReadRequest, into data: UnsafeMutableRawPointer, leader: Bool) throws(ShoalError) -> FetchPlan {
        let key = request.block
        if let known = metadata.lastKnown(key.object), known.etag == key.etag, known.size != key.objectSize {
            throw ShoalError(.badRequest, "READ names \(key.object) at version \(known.etag) as \(key.objectSize) bytes, but it has \(known.size): STAT it again")
        }
        let length = key.expectedLength
        // Few blocks missing (this one fill, or one beside it): its GET alone would bound the
        // read, so the block comes in parts on several connections at once. Not for a warm: its
        // many fills at once are its parallelism, and each block costs the store one GET.
        let parts = length >= 1 << 20 && fills.inFlight <= 2 && !request.isFillOnly ? fillParts : 1
        return FetchPlan(request: request, length: length, parts: parts, address: UInt(bitPattern: data), leader: leader, key: key)
    }

    /// Fill threads that may wait on a warm's GET at once (`fetch`); set by the worker to half its
    /// fill threads and half its stores' blocking requests (the other half of each is left to
    /// readers' misses and STATs). 0: every GET on the fetch thread.
    let warmFetchesHere = Atomic<Int>(8)
    private let warmFetchesRunning = Atomic<Int>(0)
    /// Warms' GETs run on fill threads so far (the rest ran on the fetch thread).
    let warmFetchesDoneHere = Atomic<Int>(0)

    /// The fill of `plan`. A reader's GET is started on the store's fetch thread, which reports
    /// its bytes with `progress` (from the block's start, checked against the version) and its
    /// end with `done`; this fill thread is free meanwhile. A warm's fill (a fill-only READ, no
    /// bytes to stream) runs here to the end while fewer than `warmFetchesHere` do: the fill
    /// thread that caches the block then answers the warm, with no hand-over to the fetch
    /// thread and back (on a small block those cost about as much as the GET itself).
    /// When the transfer ends the block is checksummed and (for the leader of its fill)
    /// published to the readers waiting on it, then the range to send is the result.
    private func fetch(_ plan: FetchPlan, store: any ObjectStore, claimed: Bool, progress: @escaping @Sendable (Int) -> Void,
                       done: @escaping @Sendable (Result<FilledRange, ShoalError>) -> Void) throws(ShoalError) -> FillStart {
        if plan.request.isFillOnly, claimed || claimWarmFetch() {
            defer { if !claimed { releaseWarmFetch() } }
            warmFetchesDoneHere.add(1, ordering: .relaxed)
            if let peer = fromPreviousOwner(plan) { return .ready(try peer.get()) }
            metrics.fills.increment()
            metrics.fillsInFlight.increment()
            let key = plan.key
            let result = Result { () throws(ShoalError) -> StoreRead in
                let got = try store.get(bucket: key.object.bucket, key: key.object.key, offset: key.objectOffset, length: plan.length,
                                        ifMatch: key.etag, into: plan.data)
                // As the fetch thread's GET says it (`startGet`): the object changed.
                guard got.objectSize == key.objectSize else {
                    throw ShoalError(.preconditionFailed, "\(key.object) has \(got.objectSize) bytes in the store where version \(key.etag) has \(key.objectSize): it changed")
                }
                return got
            }
            metrics.fillsInFlight.decrement()
            return .ready(try complete(plan, result, fromStore: true).get())
        }
        return .fetch { [self] in
            if let peer = fromPreviousOwner(plan) {
                progress(plan.length)
                done(peer)
                return
            }
            metrics.fills.increment()
            metrics.fillsInFlight.increment()
            let key = plan.key
            store.startGet(bucket: key.object.bucket, key: key.object.key, offset: key.objectOffset, length: plan.length, ifMatch: key.etag,
                           objectSize: key.objectSize, into: plan.data, parts: plan.parts, progress: progress) { [self] result in
                metrics.fillsInFlight.decrement()
                done(complete(plan, result, fromStore: true))
            }
        }
    }

    /// Takes one of the `warmFetchesHere` (false: all taken); `releaseWarmFetch` gives it back.
    func claimWarmFetch() -> Bool {
        var running = warmFetchesRunning.load(ordering: .relaxed)
        let limit = warmFetchesHere.load(ordering: .relaxed)
        while running < limit {
            let (exchanged, now) = warmFetchesRunning.compareExchange(expected: running, desired: running + 1, ordering: .relaxed)
            if exchanged { return true }
            running = now
        }
        return false
    }

    func releaseWarmFetch() { warmFetchesRunning.subtract(1, ordering: .relaxed) }

    /// After a view change, the block's previous owner may hold it: no GET then.
    private func fromPreviousOwner(_ plan: FetchPlan) -> Result<FilledRange, ShoalError>? {
        guard let handover, handover.fetch(plan.key, id: plan.request.id, epoch: plan.request.epoch, length: plan.length, into: plan.data,
                                              metrics: metrics, pushed: plan.request.isPush)
        else { return nil }
        return complete(plan, .success(StoreRead(count: plan.length, objectSize: plan.key.objectSize)), fromStore: false)
    }

    /// The block's bytes are in place (or the GET failed): checksummed and published to the
    /// readers waiting on this fill, then the range to send. A leader that fails lets the
    /// readers waiting on it go, with its error.
    private func complete(_ plan: FetchPlan, _ result: Result<StoreRead, ShoalError>, fromStore: Bool) -> Result<FilledRange, ShoalError> {
        let (request, key, length, data, leader) = (plan.request, plan.key, plan.length, plan.data, plan.leader)
        var finished = false
        let outcome = Result { () throws(ShoalError) -> FilledRange in
            let got: StoreRead
            do throws(ShoalError) { got = try result.get() } catch {
                if error.code == .preconditionFailed || error.code == .notFound { metadata.invalidate(key.object) }
                throw error
            }
            guard got.objectSize == key.objectSize, got.count == length else {
                throw ShoalError(.badRequest, "READ names \(key.object) at version \(key.etag) as \(key.objectSize) bytes, but the store has \(got.objectSize): STAT it again")
            }
            if fromStore { metrics.bytesFilled.increment(by: Int64(length)) }
            // One pass: the block's CRC and its chunks' (which the cache's record keeps).
            let (crc, chunks) = BlockCache.checksums(of: UnsafeRawBufferPointer(start: data, count: length))
            // A warm's fill is written to the cache even when it did not lead the flight (the
            // block kept leaving the cache as fast as others filled it): its answer says cached.
            let fill = leader || request.isFillOnly
                ? PendingFill(key: key, id: request.id, length: length, crc: crc, warm: request.isFillOnly, chunkCRCs: chunks, leader: leader) : nil
            // Readers waiting on this fill copy the bytes now, not after this reply is sent.
            if leader { fills.publish(request.id, data, length: length, crc: crc) }
            do throws(ShoalError) {
                return try served(request, object: key.object, length: length, crc: crc, data: data, fill: fill, origin: fromStore ? .store : .peer)
            } catch {
                if leader { fills.finish(request.id, error: error) }
                finished = true
                throw error
            }
        }
        if case .failure(let error) = outcome, leader, !finished { fills.finish(request.id, error: error) }
        return outcome
    }

    /// Called once the reply has been sent (or failed), on a fill thread: writes a fetched block
    /// to the cache and lets readers waiting on the same fill go on. The caller then gives the
    /// buffer back. Returns whether the block is held now (a warm's answer depends on it).
    @discardableResult
    func finishFill(_ fill: PendingFill, slot: IOSlot) -> Bool {
        // Followers read the block from the cache; if it is not there (not admitted, or the
        // write failed) they fetch it themselves.
        defer { if fill.leader { fills.finish(fill.id, error: nil) } }
        if serveFromMemory {
            // Into a tier slot, never to the disks (the switch takes the disk out of a figure).
            guard let tier else { return false }
            if let i = tier.beginLoad(fill.id, key: fill.key.encoded, bytes: BlockCache.dataOffset + fill.length, compareFrequency: false) {
                pool.tierSlot(i, of: tier).base.advanced(by: BlockCache.dataOffset).copyMemory(from: slot.base + BlockCache.dataOffset, byteCount: fill.length)
                tier.finishLoad(slot: i, length: fill.length, crc: fill.crc)
                return true
            }
            // Already there (another fill of it), or no room in its size class.
            return fill.key.encoded.withUnsafeBytes { tier.holds(fill.id, key: $0) }
        }
        // Cached already: by the reader whose fill a warm copied, or by a warm that copied this
        // one's (its write went first). Not written twice.
        if cache.contains(fill.id) { return true }
        do {
            var fraction = 1.0
            if thrashGuard {
                // The room that always holds blocks: a larger subset would cycle through the cache.
                let cacheBlocks = Int(cache.dataCapacity / (UInt64(blockSize) + UInt64(BlockCache.dataOffset)))
                fraction = AdmissionPolicy.subsetFraction(datasetBlocks: datasets.datasetBlocks(of: fill.key.object), cacheBlocks: cacheBlocks)
            }
            // A warm asked for this block by name: it is cached whatever the admission rules say.
            guard fill.warm || admission.admit(fill.id, bytes: fill.length + BlockCache.dataOffset, subsetFraction: fraction) else { return false }
            // False: the disk's cleaner had no clean region ready (counted in the disk's stats).
            guard try cache.insert(key: fill.key, id: fill.id, slot: slot, length: fill.length, crc: fill.crc, chunkCRCs: fill.chunkCRCs) else { return false }
            handover?.journal(fill.key, fill.id)
            return true
        } catch {
            // The reader has its bytes; a block that cannot be cached is only a later miss.
            metrics.error(error.code)
            logger.warning("could not cache a filled block", metadata: ["block": "\(fill.key)", "error": "\(error)"])
            return false
        }
    }
}
