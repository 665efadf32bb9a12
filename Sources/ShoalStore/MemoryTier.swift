#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys

/// A block served from the DRAM tier: which slot holds it, how many bytes, and its whole-block
/// CRC32C. The slot is pinned until the caller's `unpin(slot)`.
public struct TierHit: Sendable, Equatable {
    public let slot: Int
    public let length: Int
    public let crc: UInt32

    public init(slot: Int, length: Int, crc: UInt32) {
        self.slot = slot
        self.length = length
        self.crc = crc
    }
}

public struct MemoryTierStats: Sendable, Equatable {
    public var hits: UInt64 = 0
    /// Lookups that missed (absent, still loading, removed, or a key that differs under the same ID).
    public var misses: UInt64 = 0
    /// Loads finished (slots made resident).
    public var loads: UInt64 = 0
    /// Resident blocks CLOCK pushed out to make room (not `remove`s).
    public var evictions: UInt64 = 0
    /// Loads refused because the block was not more frequent than the one it would push out.
    public var refused: UInt64 = 0
    /// Slots visible to lookup.
    public var resident: Int = 0
    /// Slots with at least one pin (resident ones, and removed ones waiting for their last unpin).
    public var pinned: Int = 0

    public init() {}
}

/// The bookkeeping of the worker's DRAM tier: which of `slots` fixed slots of its registered buffer
/// region hold which hot blocks, so they are served with no disk read. It does no I/O and owns no
/// memory: slots are numbered 0..<slots and the caller maps a number to its memory.
///
/// - Admission: `recordAccess` counts every access in a count-min sketch (4 rows of 8-bit
///   counters, conservative update, halved every 10 × width accesses so old popularity fades) and
///   says when a block has been seen `admitAfter` times: worth loading.
/// - Loading: `beginLoad` claims a slot (free ones first, else CLOCK over resident, unpinned
///   slots); the caller fills it and calls `finishLoad` (now visible) or `abortLoad` (free again).
///   A loading slot is invisible to lookup and never evicted.
/// - Serving: `lookup` hits only a resident slot whose stored key bytes equal the caller's
///   exactly: the block ID is a non-cryptographic hash a client can collide on purpose, and a
///   collision costs a miss, never a wrong block. A hit pins the slot until `unpin`; a pinned
///   slot is never evicted nor reused, so its bytes stay put while they are being sent.
public final class MemoryTier: @unchecked Sendable {
    private enum SlotState: UInt8 {
        case free
        /// Claimed by `beginLoad`; becomes resident at `finishLoad`.
        case loading
        /// Loading, but `remove`d meanwhile: freed (not made visible) at `finishLoad`/`abortLoad`.
        case cancelled
        /// Visible to lookup.
        case resident
        /// Removed while pinned: invisible, freed at the last `unpin`.
        case draining
    }

    /// The number of slots (0: the tier is off).
    public let slots: Int

    private let lock = ConditionLock()
    private let admitAfter: UInt8

    // Per slot.
    private var states: [SlotState]
    private var ids: [BlockID]
    private var keys: [[UInt8]]
    private var lengths: [Int]
    private var crcs: [UInt32]
    private var pins: [UInt32]
    private var referenced: [Bool]

    /// ID to slot, for slots loading or resident (not cancelled, not draining).
    private var index: [BlockID: Int] = [:]
    private var freeSlots: [Int]
    private var hand = 0
    private var counters = MemoryTierStats()
    private var pinnedSlots = 0
    private var residentSlots = 0

    // The frequency sketch: 4 rows of `sketchWidth` counters, row r at r * sketchWidth.
    private var sketch: [UInt8]
    private let sketchShift: UInt64
    private let sketchWidth: Int
    private var sketchAccesses = 0
    private static let sketchRows = 4
    private static let rowSeeds: (UInt64, UInt64, UInt64, UInt64) =
        (0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0xD6E8_FEB8_6659_FD93)

    /// `slots` may be 0 (tier off). `admitAfter` is clamped to 1...255 (the counters are 8 bits).
    public init(slots: Int, admitAfter: Int = 2) {
        precondition(slots >= 0, "negative slot count")
        self.slots = slots
        self.admitAfter = UInt8(max(1, min(255, admitAfter)))
        states = Array(repeating: .free, count: slots)
        ids = Array(repeating: BlockID(high: 0, low: 0), count: slots)
        keys = Array(repeating: [], count: slots)
        lengths = Array(repeating: 0, count: slots)
        crcs = Array(repeating: 0, count: slots)
        pins = Array(repeating: 0, count: slots)
        referenced = Array(repeating: false, count: slots)
        // Popped from the end: slot 0 is handed out first.
        freeSlots = Array((0..<slots).reversed())
        index.reserveCapacity(slots)
        if slots > 0 {
            var bits = 4  // at least 16 counters a row
            while 1 << bits < 4 * slots { bits += 1 }
            sketchWidth = 1 << bits
            sketchShift = UInt64(64 - bits)
            sketch = Array(repeating: 0, count: MemoryTier.sketchRows * sketchWidth)
        } else {
            sketchWidth = 0
            sketchShift = 0
            sketch = []
        }
    }

    // MARK: Admission

    @inline(__always)
    private func sketchIndex(_ id: BlockID, row: Int) -> Int {
        let seed: UInt64
        switch row {
        case 0: seed = MemoryTier.rowSeeds.0
        case 1: seed = MemoryTier.rowSeeds.1
        case 2: seed = MemoryTier.rowSeeds.2
        default: seed = MemoryTier.rowSeeds.3
        }
        // Multiply-shift over both halves: each row its own independent-looking hash.
        let h = (id.low ^ (id.high &* seed)) &* 0x9E37_79B9_7F4A_7C15
        return row * sketchWidth + Int(truncatingIfNeeded: h >> sketchShift)
    }

    /// The sketch's estimate of `id`'s accesses (not counting one).
    private func estimate(_ id: BlockID) -> UInt8 {
        min(min(sketch[sketchIndex(id, row: 0)], sketch[sketchIndex(id, row: 1)]),
            min(sketch[sketchIndex(id, row: 2)], sketch[sketchIndex(id, row: 3)]))
    }

    /// Counts an access to `id`; true once its estimated count has reached `admitAfter` (the
    /// block is worth loading into the tier). Always false with 0 slots.
    public func recordAccess(_ id: BlockID) -> Bool {
        guard slots > 0 else { return false }
        return lock.withLock {
            let i0 = sketchIndex(id, row: 0), i1 = sketchIndex(id, row: 1)
            let i2 = sketchIndex(id, row: 2), i3 = sketchIndex(id, row: 3)
            let least = min(min(sketch[i0], sketch[i1]), min(sketch[i2], sketch[i3]))
            var estimate = least
            if least < UInt8.max {
                // Conservative update: only the counters at the minimum grow (fewer overestimates).
                if sketch[i0] == least { sketch[i0] = least + 1 }
                if sketch[i1] == least { sketch[i1] = least + 1 }
                if sketch[i2] == least { sketch[i2] = least + 1 }
                if sketch[i3] == least { sketch[i3] = least + 1 }
                estimate = least + 1
            }
            sketchAccesses += 1
            if sketchAccesses >= 10 * sketchWidth {
                sketchAccesses = 0
                for i in sketch.indices { sketch[i] >>= 1 }
            }
            return estimate >= admitAfter
        }
    }

    // MARK: Serving

    /// A hit (the slot pinned and marked referenced) when `id` is resident and its stored key
    /// bytes equal `key` exactly; nil otherwise. Every hit needs one `unpin(slot)`.
    public func lookup(_ id: BlockID, key: UnsafeRawBufferPointer) -> TierHit? {
        lock.withLock {
            guard let slot = index[id], states[slot] == .resident, keyMatches(slot, key) else {
                counters.misses += 1
                return nil
            }
            if pins[slot] == 0 { pinnedSlots += 1 }
            pins[slot] += 1
            referenced[slot] = true
            counters.hits += 1
            return TierHit(slot: slot, length: lengths[slot], crc: crcs[slot])
        }
    }

    @inline(__always)
    private func keyMatches(_ slot: Int, _ key: UnsafeRawBufferPointer) -> Bool {
        keys[slot].withUnsafeBytes { stored in
            guard stored.count == key.count else { return false }
            guard let a = stored.baseAddress, let b = key.baseAddress else { return stored.count == 0 }
            return memcmp(a, b, stored.count) == 0
        }
    }

    /// Releases one pin of a `lookup` hit. The last pin of a removed block frees its slot.
    public func unpin(_ slot: Int) {
        lock.withLock {
            precondition(pins[slot] > 0, "MemoryTier.unpin(\(slot)) without a pin")
            pins[slot] -= 1
            guard pins[slot] == 0 else { return }
            pinnedSlots -= 1
            if states[slot] == .draining { release(slot) }
        }
    }

    // MARK: Loading

    /// Claims a slot to load `id` (whose full key is `key`) into: nil when the block is already
    /// resident or loading, or no slot can be had (every slot loading or pinned, or all kept
    /// referenced through two turns of the CLOCK hand). Free slots go first; otherwise the CLOCK
    /// hand evicts the first resident, unpinned slot with its reference bit clear, clearing the
    /// bits it passes.
    ///
    /// Once the tier is full, a block takes a resident one's place only if it is more frequent
    /// than that one (TinyLFU's rule), unless that one is no longer hot at all: a scan of more
    /// blocks than the tier holds, each read as often as the next, then leaves the resident set
    /// in place instead of cycling every block through it. `compareFrequency: false` skips the
    /// rule (blocks put in as they are filled, `serveFromMemory`).
    public func beginLoad(_ id: BlockID, key: [UInt8], compareFrequency: Bool = true) -> Int? {
        guard slots > 0 else { return nil }
        return lock.withLock {
            guard index[id] == nil else { return nil }
            let slot: Int
            if let free = freeSlots.popLast() {
                slot = free
            } else {
                guard let victim = clockVictim() else { return nil }
                if compareFrequency {
                    let resident = estimate(ids[victim])
                    guard resident < admitAfter || estimate(id) > resident else {
                        counters.refused += 1
                        return nil
                    }
                }
                index.removeValue(forKey: ids[victim])
                residentSlots -= 1
                counters.evictions += 1
                slot = victim
            }
            states[slot] = .loading
            ids[slot] = id
            keys[slot] = key
            lengths[slot] = 0
            crcs[slot] = 0
            referenced[slot] = false
            index[id] = slot
            return slot
        }
    }

    /// The next resident, unpinned, unreferenced slot under the hand, within two full turns.
    private func clockVictim() -> Int? {
        for _ in 0..<(2 * slots) {
            let slot = hand
            hand = hand + 1 == slots ? 0 : hand + 1
            guard states[slot] == .resident, pins[slot] == 0 else { continue }
            if referenced[slot] {
                referenced[slot] = false
            } else {
                return slot
            }
        }
        return nil
    }

    /// The slot `beginLoad` gave holds the block's `length` bytes now, whole-block CRC32C `crc`:
    /// it becomes visible to lookup (unless the block was removed while loading: then it is freed).
    public func finishLoad(slot: Int, length: Int, crc: UInt32) {
        lock.withLock {
            switch states[slot] {
            case .loading:
                states[slot] = .resident
                lengths[slot] = length
                crcs[slot] = crc
                residentSlots += 1
                counters.loads += 1
            case .cancelled:
                release(slot)
            default:
                preconditionFailure("MemoryTier.finishLoad(slot: \(slot)) of a slot not loading")
            }
        }
    }

    /// The load into `slot` failed: the slot is free again.
    public func abortLoad(slot: Int) {
        lock.withLock {
            switch states[slot] {
            case .loading:
                index.removeValue(forKey: ids[slot])
                release(slot)
            case .cancelled:
                release(slot)
            default:
                preconditionFailure("MemoryTier.abortLoad(slot: \(slot)) of a slot not loading")
            }
        }
    }

    // MARK: Removal

    /// Drops `id` (its version changed, say): no longer visible to lookup. A pinned slot is freed
    /// at its last `unpin`; a loading one when its load finishes or aborts.
    public func remove(_ id: BlockID) {
        lock.withLock {
            guard let slot = index.removeValue(forKey: id) else { return }
            switch states[slot] {
            case .loading:
                states[slot] = .cancelled
            case .resident:
                residentSlots -= 1
                if pins[slot] > 0 { states[slot] = .draining } else { release(slot) }
            default:
                preconditionFailure("MemoryTier: index names slot \(slot) in state \(states[slot])")
            }
        }
    }

    /// Lock held; the slot is out of `index` and unpinned.
    private func release(_ slot: Int) {
        states[slot] = .free
        keys[slot] = []
        referenced[slot] = false
        freeSlots.append(slot)
    }

    // MARK: Counters

    public var stats: MemoryTierStats {
        lock.withLock {
            var s = counters
            s.resident = residentSlots
            s.pinned = pinnedSlots
            return s
        }
    }
}
