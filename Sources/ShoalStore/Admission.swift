import ShoalCore
import ShoalSys

/// What may be written to flash: optionally only blocks missed twice (a doorkeeper bitmap,
/// cleared as it fills, remembers first misses), and at most a daily write budget in drive
/// writes per day (a token bucket that refills continuously and holds one day's budget).
/// Blocks refused are still served; they are just not cached.
public final class AdmissionPolicy: @unchecked Sendable {
    public struct Config: Sendable, Equatable {
        public var admitOnSecondMiss = false
        /// Drive writes per day over the cache's capacity; nil for no budget.
        public var writeBudgetDWPD: Double?
        public init() {}
    }

    public struct Stats: Sendable, Equatable {
        public var admitted: UInt64 = 0
        public var refusedFirstMiss: UInt64 = 0
        public var refusedBudget: UInt64 = 0
        public var refusedSubset: UInt64 = 0
        /// Fraction of the day's budget spent (0 without a budget).
        public var budgetUsed: Double = 0
    }

    private let config: Config
    private let lock = ConditionLock()
    private var doorkeeper: [UInt64]
    private var doorkeeperEntries = 0
    private let doorkeeperLimit: Int
    private let dailyBytes: Double
    private var tokens: Double
    private var lastRefill: UInt64
    private var stats = Stats()

    public init(config: Config, capacity: UInt64, expectedBlocks: Int) {
        self.config = config
        // About 8 bits per block the cache holds: few false "seen before" answers.
        let bits = max(1 << 16, min(1 << 30, expectedBlocks * 8))
        doorkeeper = Array(repeating: 0, count: (bits + 63) / 64)
        doorkeeperLimit = max(1024, expectedBlocks)
        dailyBytes = (config.writeBudgetDWPD ?? 0) * Double(capacity)
        tokens = dailyBytes
        lastRefill = monotonicNanos()
    }

    /// Whether a block of `bytes` that just missed should be written to the cache. With
    /// `subsetFraction` below 1 (the thrash guard: a dataset larger than its share of the cache),
    /// only that fraction of the dataset's blocks, always the same ones (by ID hash), is admitted:
    /// a stable subset survives every shuffled epoch where LRU would keep none.
    public func admit(_ id: BlockID, bytes: Int, subsetFraction: Double = 1) -> Bool {
        if subsetFraction < 1, Double(id.low >> 44) / Double(1 << 20) >= subsetFraction {
            lock.withLock { stats.refusedSubset += 1 }
            return false
        }
        return lock.withLock {
            if config.admitOnSecondMiss {
                let bitCount = UInt64(doorkeeper.count * 64)
                let a = Int(id.low % bitCount)
                let b = Int((id.high ^ (id.low >> 17)) % bitCount)
                let seen = doorkeeper[a >> 6] & (1 << UInt64(a & 63)) != 0 && doorkeeper[b >> 6] & (1 << UInt64(b & 63)) != 0
                if !seen {
                    doorkeeper[a >> 6] |= 1 << UInt64(a & 63)
                    doorkeeper[b >> 6] |= 1 << UInt64(b & 63)
                    doorkeeperEntries += 1
                    if doorkeeperEntries > doorkeeperLimit {
                        for i in doorkeeper.indices { doorkeeper[i] = 0 }
                        doorkeeperEntries = 0
                    }
                    stats.refusedFirstMiss += 1
                    return false
                }
            }
            if config.writeBudgetDWPD != nil {
                let now = monotonicNanos()
                tokens = min(dailyBytes, tokens + dailyBytes * Double(now - lastRefill) / 86_400e9)
                lastRefill = now
                guard tokens >= Double(bytes) else {
                    stats.refusedBudget += 1
                    return false
                }
                tokens -= Double(bytes)
            }
            stats.admitted += 1
            return true
        }
    }

    /// The thrash guard's rule: a dataset that fits in the cache is admitted whole; a larger one
    /// only a stable subset of 90% of the cache's worth of blocks.
    public static func subsetFraction(datasetBlocks: Int, cacheBlocks: Int) -> Double {
        guard datasetBlocks > cacheBlocks, datasetBlocks > 0 else { return 1 }
        return 0.9 * Double(cacheBlocks) / Double(datasetBlocks)
    }

    public var snapshot: Stats {
        lock.withLock {
            var s = stats
            s.budgetUsed = dailyBytes > 0 ? 1 - tokens / dailyBytes : 0
            return s
        }
    }
}
