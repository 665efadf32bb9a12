import ShoalCore
import ShoalSys

/// Reads per dataset, a dataset being an object's bucket and first path component
/// (`s3://bucket/imagenet/`), bounded to `limit` datasets (the rest count under "other").
final class DatasetStats: @unchecked Sendable {
    struct Counts: Sendable, Equatable {
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var bytesServed: UInt64 = 0
        var bytesFilled: UInt64 = 0
        var hitRatio: Double { hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses) }
    }

    private let lock = ConditionLock()
    private var counts: [String: Counts] = [:]
    /// Blocks of the distinct objects seen per dataset (the thrash guard's dataset size).
    private var objectsSeen: [String: Set<ObjectRef>] = [:]
    private var blocks: [String: Int] = [:]
    private let maxObjectsTracked = 1_000_000
    private var objectsTracked = 0
    private let limit: Int
    /// The most read prefixes over time, kept across restarts (`shoal hot`).
    private var hot = HotPrefixes()

    init(limit: Int = 256) { self.limit = limit }

    func record(_ object: ObjectRef, hit: Bool, served: Int, filled: Int, objectBlocks: Int = 0) {
        record(object, hits: hit ? 1 : 0, misses: hit ? 0 : 1, served: served, filled: filled, objectBlocks: objectBlocks)
    }

    /// Several reads of one object at once (an io shard counts its hits and reports them in batches).
    func record(_ object: ObjectRef, hits: Int, misses: Int, served: Int, filled: Int, objectBlocks: Int = 0) {
        var name = object.dataset
        let now = wallClockSeconds()
        lock.withLock {
            hot.record(name, reads: UInt64(hits + misses), bytes: UInt64(served), now: now)
            if counts[name] == nil && counts.count >= limit { name = "other" }
            if objectsTracked < maxObjectsTracked, objectsSeen[name, default: []].insert(object).inserted {
                objectsTracked += 1
                blocks[name, default: 0] += objectBlocks
            }
            var c = counts[name] ?? Counts()
            c.hits += UInt64(hits)
            c.misses += UInt64(misses)
            c.bytesServed += UInt64(served)
            c.bytesFilled += UInt64(filled)
            counts[name] = c
        }
    }

    /// Blocks seen so far in `object`'s dataset.
    func datasetBlocks(of object: ObjectRef) -> Int {
        let name = object.dataset
        return lock.withLock { blocks[name] ?? blocks["other"] ?? 0 }
    }

    var snapshot: [(String, Counts)] { lock.withLock { counts.sorted { $0.key < $1.key } } }

    /// The prefixes read most since `since` (wall-clock seconds).
    func hottest(since: Double, limit: Int) -> [HotPrefixes.Entry] { lock.withLock { hot.top(since: since, limit: limit) } }

    /// The hot prefixes' summaries, to keep (`loadHot` takes them back).
    var hotEncoded: String { lock.withLock { hot.encoded } }

    func loadHot(_ bytes: [UInt8]) throws(ShoalError) {
        var h = HotPrefixes()
        try h.decode(bytes, now: wallClockSeconds())
        lock.withLock { hot = h }
    }
}
