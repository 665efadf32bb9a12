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
    /// Pages a class took from another (their blocks evicted with them).
    public var pagesMoved: UInt64 = 0
    /// Slots visible to lookup.
    public var resident: Int = 0
    /// Bytes of the blocks in them.
    public var residentBytes: Int = 0
    /// Slots with at least one pin (resident ones, and removed ones waiting for their last unpin).
    public var pinned: Int = 0

    public init() {}
}

/// The bookkeeping of the worker's DRAM tier: which slots of its registered buffer region hold
/// which hot blocks, so they are served with no disk read. It does no I/O and owns no memory: the
/// region is `pages` pages of `pageSize` bytes (the pool's tier buffers), and a slot is a place in
/// one page that the caller maps to memory with `location(of:)`.
///
/// - Slots sized to blocks: a page is cut into slots of one size class: the whole page, or a half,
///   a quarter, … down to `smallestSlot` (each a multiple of it). A block goes in the smallest class
///   that holds it, so a tier of a GiB keeps thousands of 100 KiB objects, not 255 of them in 4 MiB
///   slots each. Free pages go to the class that needs one; once none is free, a class takes the
///   page of another class that the page CLOCK finds cold (none of its blocks read since the hand
///   last passed), and otherwise evicts within its own pages.
/// - Admission: `recordAccess` counts every access in a count-min sketch (4 rows of 8-bit
///   counters, conservative update, halved every 10 × width accesses so old popularity fades) and
///   says when a block has been seen `admitAfter` times: worth loading.
/// - Loading: `beginLoad` claims a slot (free ones first, then a free or cold page, else CLOCK over
///   the class's resident, unpinned slots); the caller fills it and calls `finishLoad` (now
///   visible) or `abortLoad` (free again). A loading slot is invisible to lookup and never evicted.
/// - Serving: `lookup` hits only a resident slot whose stored key bytes equal the caller's
///   exactly: the block ID is a non-cryptographic hash a client can collide on purpose, and a
///   collision costs a miss, never a wrong block. A hit pins the slot until `unpin`; a pinned
///   slot is never evicted nor reused (nor is its page taken), so its bytes stay put while they
///   are being sent.
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

    /// Pages of the region (0: the tier is off).
    public let pages: Int
    /// Bytes of a page: the largest slot.
    public let pageSize: Int
    /// Slot sizes, largest first: class 0 is a whole page, each next one half the one before
    /// (rounded down to a multiple of `smallestSlot`), the last `smallestSlot` or more.
    public let classSizes: [Int]
    /// Slot numbers per page: slot `s` lies in page `s / perPage`, `(s % perPage) * smallestSlot`
    /// bytes in, whatever its class.
    private let perPage: Int
    private let smallestSlot: Int
    /// The range of slot numbers (0: the tier is off).
    public var slots: Int { pages * perPage }

    private let lock = ConditionLock()
    private let admitAfter: UInt8

    // Per slot number.
    private var states: [SlotState]
    private var ids: [BlockID]
    private var keys: [[UInt8]]
    private var lengths: [Int]
    private var crcs: [UInt32]
    private var pins: [UInt32]
    private var referenced: [Bool]

    // Per page: its class (-1: free), and the CLOCK hand over pages that finds a cold one to take.
    private var pageClass: [Int]
    private var freePages: [Int]
    private var pageHand = 0

    // Per class: free slots, the slots of its pages in CLOCK order, and the CLOCK hand over them.
    private var classFree: [[Int]]
    private var classSlots: [[Int]]
    private var classHands: [Int]

    /// ID to slot, for slots loading or resident (not cancelled, not draining).
    private var index: [BlockID: Int] = [:]
    private var counters = MemoryTierStats()
    private var pinnedSlots = 0
    private var residentSlots = 0
    private var residentBytes = 0

    // The frequency sketch: 4 rows of `sketchWidth` counters, row r at r * sketchWidth.
    private var sketch: [UInt8]
    private let sketchShift: UInt64
    private let sketchWidth: Int
    private var sketchAccesses = 0
    private static let sketchRows = 4
    private static let rowSeeds: (UInt64, UInt64, UInt64, UInt64) =
        (0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0xD6E8_FEB8_6659_FD93)

    /// A tier of `pages` pages of `pageSize` bytes (0 pages: off), cut into slots as small as
    /// `smallestSlot` (clamped to 1...pageSize). `admitAfter` is clamped to 1...255 (the counters
    /// are 8 bits).
    public init(pages: Int, pageSize: Int, smallestSlot: Int, admitAfter: Int = 2) {
        precondition(pages >= 0 && pageSize > 0, "bad tier geometry")
        self.pages = pages
        self.pageSize = pageSize
        let smallest = max(1, min(pageSize, smallestSlot))
        var sizes = [pageSize]
        while true {
            let next = (sizes[sizes.count - 1] / 2) / smallest * smallest
            guard next >= smallest, next < sizes[sizes.count - 1] else { break }
            sizes.append(next)
        }
        classSizes = sizes
        self.smallestSlot = smallest
        perPage = pageSize / smallest
        self.admitAfter = UInt8(max(1, min(255, admitAfter)))
        let slots = pages * perPage
        states = Array(repeating: .free, count: slots)
        ids = Array(repeating: BlockID(high: 0, low: 0), count: slots)
        keys = Array(repeating: [], count: slots)
        lengths = Array(repeating: 0, count: slots)
        crcs = Array(repeating: 0, count: slots)
        pins = Array(repeating: 0, count: slots)
        referenced = Array(repeating: false, count: slots)
        pageClass = Array(repeating: -1, count: pages)
        // Popped from the end: page 0 is handed out first.
        freePages = Array((0..<pages).reversed())
        classFree = Array(repeating: [], count: sizes.count)
        classSlots = Array(repeating: [], count: sizes.count)
        classHands = Array(repeating: 0, count: sizes.count)
        if pages > 0 {
            // Sized for the blocks the tier can hold, up to 64 a page (more is memory for nothing).
            var bits = 4  // at least 16 counters a row
            while 1 << bits < 4 * min(slots, 64 * pages) { bits += 1 }
            sketchWidth = 1 << bits
            sketchShift = UInt64(64 - bits)
            sketch = Array(repeating: 0, count: MemoryTier.sketchRows * sketchWidth)
        } else {
            sketchWidth = 0
            sketchShift = 0
            sketch = []
        }
    }

    /// A tier of `slots` slots of one size (the bookkeeping alone, as in tests).
    public convenience init(slots: Int, admitAfter: Int = 2) {
        self.init(pages: slots, pageSize: 4096, smallestSlot: 4096, admitAfter: admitAfter)
    }

    /// Where slot `slot` lies: its page and the offset in it.
    public func location(of slot: Int) -> (page: Int, offset: Int) {
        (slot / perPage, (slot % perPage) * smallestSlot)
    }

    /// The class of the smallest slots that hold `bytes` (nil: more than a page).
    private func sizeClass(for bytes: Int) -> Int? {
        guard bytes <= pageSize else { return nil }
        var c = 0
        while c + 1 < classSizes.count, classSizes[c + 1] >= bytes { c += 1 }
        return c
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

    /// Whether block `id` (stored under exactly `key`) is resident or being loaded; not counted
    /// as a hit or a miss, and nothing is pinned (a probe, or a fill checking its outcome).
    public func holds(_ id: BlockID, key: UnsafeRawBufferPointer) -> Bool {
        lock.withLock {
            guard let slot = index[id], states[slot] != .free else { return false }
            return keyMatches(slot, key)
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

    /// Claims a slot of at least `bytes` bytes (default: a page) to load `id` (whose full key is
    /// `key`) into: nil when the block is already resident or loading, is larger than a page, or
    /// no slot can be had (every slot of its class loading or pinned, or all kept referenced
    /// through two turns of the CLOCK hand). Free slots of the class go first, then a free page,
    /// then a cold page of another class; otherwise the class's CLOCK hand evicts the first
    /// resident, unpinned slot with its reference bit clear, clearing the bits it passes.
    ///
    /// Once the class is full, a block takes a resident one's place only if it is more frequent
    /// than that one (TinyLFU's rule), unless that one is no longer hot at all: a scan of more
    /// blocks than the tier holds, each read as often as the next, then leaves the resident set
    /// in place instead of cycling every block through it. `compareFrequency: false` skips the
    /// rule (blocks put in as they are filled, `serveFromMemory`).
    public func beginLoad(_ id: BlockID, key: [UInt8], bytes: Int? = nil, compareFrequency: Bool = true) -> Int? {
        guard pages > 0, let c = sizeClass(for: bytes ?? pageSize) else { return nil }
        return lock.withLock {
            guard index[id] == nil else { return nil }
            let slot: Int
            // A page taken from another class evicts its blocks: with `compareFrequency`, only
            // blocks the newcomer outranks (as for a victim of its own class).
            if let free = freeSlot(c, newcomer: compareFrequency ? estimate(id) : nil) {
                slot = free
            } else {
                guard let victim = clockVictim(c) else { return nil }
                if compareFrequency {
                    guard displaces(estimate(id), ids[victim]) else {
                        counters.refused += 1
                        return nil
                    }
                }
                evict(victim)
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

    /// Lock held: a free slot of class `c`, from its own pages, a free page, or a cold page of
    /// another class.
    private func freeSlot(_ c: Int, newcomer: UInt8? = nil) -> Int? {
        if let slot = classFree[c].popLast() { return slot }
        guard let page = freePages.popLast() ?? coldPage(notOf: c, newcomer: newcomer) else { return nil }
        pageClass[page] = c
        let count = c == 0 ? 1 : pageSize / classSizes[c]
        let stride = classSizes[c] / smallestSlot
        let first = page * perPage
        let made = (0..<count).map { first + $0 * stride }
        classSlots[c].append(contentsOf: made)
        // Popped from the end: the page's first slot goes first.
        classFree[c].append(contentsOf: made.reversed())
        return classFree[c].popLast()
    }

    /// Lock held: the slot numbers of page `page` (of class `c`).
    private func slotsOf(page: Int, class c: Int) -> StrideTo<Int> {
        let first = page * perPage
        let count = c == 0 ? 1 : pageSize / classSizes[c]
        let stride = c == 0 ? 1 : classSizes[c] / smallestSlot
        return Swift.stride(from: first, to: first + count * stride, by: stride)
    }

    /// Lock held: a page of a class other than `c` none of whose blocks were read since the page
    /// hand last passed, emptied and taken out of its class; nil when the pages looked at hold none. Pages
    /// with a slot loading or pinned are passed over; the others' reference bits are cleared.
    /// With `newcomer` (the estimated frequency of the block that wants the room), so are pages
    /// holding a block seen often enough to stay that the newcomer does not outrank, so a scan
    /// of blocks of one size cannot flush the tier's blocks of another.
    private func coldPage(notOf c: Int, newcomer: UInt8? = nil) -> Int? {
        // At most 64 pages a call (the hand goes on from there next time): pages kept for their
        // blocks' frequency stay warm, and a load must not walk the whole tier under the lock.
        for _ in 0..<min(pages, 64) {
            let page = pageHand
            pageHand = pageHand + 1 == pages ? 0 : pageHand + 1
            let owner = pageClass[page]
            guard owner >= 0, owner != c else { continue }
            var busy = false, hot = false
            for slot in slotsOf(page: page, class: owner) {
                switch states[slot] {
                case .free: continue
                case .resident where pins[slot] == 0:
                    if referenced[slot] { hot = true }
                    if let newcomer, !hot, !displaces(newcomer, ids[slot]) { hot = true }
                default: busy = true
                }
                if busy { break }
            }
            guard !busy else { continue }
            guard !hot else {
                for slot in slotsOf(page: page, class: owner) { referenced[slot] = false }
                continue
            }
            for slot in slotsOf(page: page, class: owner) where states[slot] == .resident {
                evict(slot)
                states[slot] = .free
                keys[slot] = []
            }
            classFree[owner].removeAll { $0 / perPage == page }
            // The hand stays on the slot it was on: it moves back by the slots taken out before it.
            let before = classSlots[owner].prefix(classHands[owner]).count { $0 / perPage == page }
            classSlots[owner].removeAll { $0 / perPage == page }
            classHands[owner] -= before
            if classHands[owner] >= classSlots[owner].count { classHands[owner] = 0 }
            pageClass[page] = -1
            counters.pagesMoved += 1
            return page
        }
        return nil
    }

    /// Lock held: whether a block seen `newcomer` times may take the place of resident block
    /// `resident` (TinyLFU): it was not seen often enough to stay, or the newcomer more often.
    private func displaces(_ newcomer: UInt8, _ resident: BlockID) -> Bool {
        let seen = estimate(resident)
        return seen < admitAfter || newcomer > seen
    }

    /// Lock held: resident, unpinned `slot` leaves the index (its slot is reused by the caller).
    private func evict(_ slot: Int) {
        index.removeValue(forKey: ids[slot])
        residentSlots -= 1
        residentBytes -= lengths[slot]
        counters.evictions += 1
    }

    /// The next resident, unpinned, unreferenced slot of class `c` under its hand, within two
    /// full turns.
    private func clockVictim(_ c: Int) -> Int? {
        let members = classSlots[c].count
        for _ in 0..<(2 * members) {
            let slot = classSlots[c][classHands[c]]
            classHands[c] = classHands[c] + 1 == members ? 0 : classHands[c] + 1
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
                residentBytes += length
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
                residentBytes -= lengths[slot]
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
        classFree[pageClass[slot / perPage]].append(slot)
    }

    // MARK: Counters

    public var stats: MemoryTierStats {
        lock.withLock {
            var s = counters
            s.resident = residentSlots
            s.residentBytes = residentBytes
            s.pinned = pinnedSlots
            return s
        }
    }
}
