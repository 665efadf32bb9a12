import Testing
import ShoalCore
@testable import ShoalStore
import ShoalSys

@Suite struct MemoryTierTests {
    func key(_ n: Int) -> [UInt8] { Array("default/bucket/object#\(n)@etag".utf8) }
    func id(_ n: Int) -> BlockID { BlockID(hashing: key(n)) }
    func length(_ n: Int) -> Int { 1000 + n }
    func crc(_ n: Int) -> UInt32 { UInt32(truncatingIfNeeded: n) &* 2_654_435_761 }

    func lookup(_ tier: MemoryTier, _ n: Int) -> TierHit? {
        key(n).withUnsafeBytes { tier.lookup(id(n), key: $0) }
    }

    /// Loads block `n` all the way; the slot it went to.
    @discardableResult
    func load(_ tier: MemoryTier, _ n: Int) throws -> Int {
        let slot = try #require(tier.beginLoad(id(n), key: key(n)))
        tier.finishLoad(slot: slot, length: length(n), crc: crc(n))
        return slot
    }

    /// A full tier of hot blocks and a scan of as many more, each read as often: the scan's blocks
    /// are refused (TinyLFU), so the resident set stays and keeps hitting; a block read more
    /// often than a resident one does take its place.
    @Test func aScanLargerThanTheTierDoesNotCycleThroughIt() throws {
        let tier = MemoryTier(slots: 8)
        for n in 0..<8 {
            _ = tier.recordAccess(id(n))
            #expect(tier.recordAccess(id(n)))
            try load(tier, n)
        }
        for n in 8..<16 {
            _ = tier.recordAccess(id(n))
            #expect(tier.recordAccess(id(n)))
            #expect(tier.beginLoad(id(n), key: key(n)) == nil, "block \(n), no more frequent than the resident ones, took a slot")
        }
        #expect((0..<8).allSatisfy { lookup(tier, $0).map { tier.unpin($0.slot); return true } ?? false })
        #expect(tier.stats.refused == 8 && tier.stats.evictions == 0)
        for _ in 0..<3 { _ = tier.recordAccess(id(99)) }
        #expect(tier.beginLoad(id(99), key: key(99)) != nil, "a block read more often than a resident one is admitted")
        #expect(tier.stats.evictions == 1)
    }

    @Test func admitsFromTheSecondAccess() {
        let tier = MemoryTier(slots: 64)
        for n in 0..<50 { #expect(!tier.recordAccess(id(n)), "block \(n) admitted on its first access") }
        for n in 0..<50 { #expect(tier.recordAccess(id(n)), "block \(n) not admitted on its second access") }
        let strict = MemoryTier(slots: 8, admitAfter: 3)
        #expect(!strict.recordAccess(id(1)))
        #expect(!strict.recordAccess(id(1)))
        #expect(strict.recordAccess(id(1)))
    }

    /// Every 10 × width accesses the counts are halved: a single old access is forgotten.
    @Test func sketchAgesOldAccesses() {
        // 1 slot: 16 counters a row, halved every 160 accesses.
        let aged = MemoryTier(slots: 1)
        #expect(!aged.recordAccess(id(0)))
        for _ in 0..<159 { _ = aged.recordAccess(id(1)) }
        #expect(!aged.recordAccess(id(0)), "the first access should have been halved away")
        #expect(aged.recordAccess(id(0)))
        // Without the halving in between, the second access admits.
        let fresh = MemoryTier(slots: 1)
        #expect(!fresh.recordAccess(id(0)))
        for _ in 0..<150 { _ = fresh.recordAccess(id(1)) }
        #expect(fresh.recordAccess(id(0)))
    }

    @Test func residentBlockHitsAndPins() throws {
        let tier = MemoryTier(slots: 4)
        #expect(lookup(tier, 7) == nil)
        let slot = try #require(tier.beginLoad(id(7), key: key(7)))
        #expect(lookup(tier, 7) == nil, "a loading block is not visible")
        tier.finishLoad(slot: slot, length: length(7), crc: crc(7))
        #expect(tier.beginLoad(id(7), key: key(7)) == nil, "already resident")
        let hit = try #require(lookup(tier, 7))
        #expect(hit == TierHit(slot: slot, length: length(7), crc: crc(7)))
        #expect(lookup(tier, 7)?.slot == slot)
        var s = tier.stats
        #expect(s.hits == 2 && s.misses == 2 && s.loads == 1 && s.resident == 1 && s.pinned == 1)
        tier.unpin(slot)
        #expect(tier.stats.pinned == 1, "one of two pins left")
        tier.unpin(slot)
        s = tier.stats
        #expect(s.pinned == 0 && s.resident == 1)
    }

    @Test func pinnedSlotIsNeverEvicted() throws {
        let tier = MemoryTier(slots: 4)
        for n in 0..<4 { try load(tier, n) }
        let pinned = try #require(lookup(tier, 2))
        for n in 100..<140 { try load(tier, n) }
        #expect(tier.stats.evictions == 40)
        #expect(tier.stats.resident == 4)
        let again = try #require(lookup(tier, 2), "the pinned block was evicted")
        #expect(again == pinned)
        tier.unpin(again.slot)
        // Every slot pinned: nothing can be taken.
        var pins = [pinned.slot]
        for n in 100..<140 { if let h = lookup(tier, n), h.slot != pinned.slot { pins.append(h.slot) } }
        #expect(pins.count == 4)
        #expect(tier.beginLoad(id(500), key: key(500)) == nil)
        for slot in pins { tier.unpin(slot) }
        #expect(tier.stats.pinned == 0)
        #expect(tier.beginLoad(id(500), key: key(500)) != nil)
    }

    @Test func clockKeepsTheRecentlyReferencedBlock() throws {
        let tier = MemoryTier(slots: 4)
        for n in 0..<4 { try load(tier, n) }
        let hit = try #require(lookup(tier, 1))
        tier.unpin(hit.slot)
        for n in 10..<13 { try load(tier, n) }
        #expect(lookup(tier, 1).map { tier.unpin($0.slot); return true } == true, "the referenced block was evicted")
        for n in [0, 2, 3] { #expect(lookup(tier, n) == nil, "block \(n) should have gone first") }
        #expect(tier.stats.evictions == 3)
    }

    /// The block ID is a hash a client can collide: the same ID with other key bytes is a miss.
    @Test func keyMismatchUnderTheSameIDIsAMiss() throws {
        let tier = MemoryTier(slots: 2)
        let sameID = BlockID(high: 1, low: 2)
        let slot = try #require(tier.beginLoad(sameID, key: [1, 2, 3, 4]))
        tier.finishLoad(slot: slot, length: 10, crc: 99)
        for other: [UInt8] in [[1, 2, 3, 5], [1, 2, 3], [1, 2, 3, 4, 0], []] {
            #expect(other.withUnsafeBytes { tier.lookup(sameID, key: $0) } == nil, "key \(other) hit")
        }
        #expect(tier.stats.misses == 4 && tier.stats.pinned == 0)
        let hit = try #require([UInt8]([1, 2, 3, 4]).withUnsafeBytes { tier.lookup(sameID, key: $0) })
        #expect(hit == TierHit(slot: slot, length: 10, crc: 99))
        tier.unpin(hit.slot)
    }

    @Test func loadingSlotsAreInvisibleAndNotEvicted() throws {
        let tier = MemoryTier(slots: 2)
        let a = try #require(tier.beginLoad(id(1), key: key(1)))
        #expect(tier.beginLoad(id(1), key: key(1)) == nil, "already loading")
        #expect(lookup(tier, 1) == nil)
        let b = try load(tier, 2)
        #expect(a != b)
        // Only block 2's slot can be taken; after that both are loading and none can.
        #expect(tier.beginLoad(id(3), key: key(3)) == b)
        #expect(tier.beginLoad(id(4), key: key(4)) == nil)
        #expect(lookup(tier, 2) == nil && lookup(tier, 3) == nil)
        tier.finishLoad(slot: a, length: length(1), crc: crc(1))
        let hit = try #require(lookup(tier, 1))
        #expect(hit.slot == a && hit.length == length(1) && hit.crc == crc(1))
        tier.unpin(a)
        #expect(tier.stats.evictions == 1 && tier.stats.resident == 1)
    }

    @Test func abortLoadFreesTheSlot() throws {
        let tier = MemoryTier(slots: 1)
        let slot = try #require(tier.beginLoad(id(1), key: key(1)))
        tier.abortLoad(slot: slot)
        #expect(lookup(tier, 1) == nil)
        #expect(tier.stats.resident == 0 && tier.stats.loads == 0)
        #expect(tier.beginLoad(id(2), key: key(2)) == slot, "the slot should be free")
        tier.abortLoad(slot: slot)
        #expect(tier.beginLoad(id(1), key: key(1)) == slot, "the block should not stay marked loading")
        #expect(tier.stats.evictions == 0)
    }

    @Test func removeOfAPinnedBlockFreesItOnUnpin() throws {
        let tier = MemoryTier(slots: 1)
        let slot = try load(tier, 1)
        let hit = try #require(lookup(tier, 1))
        tier.remove(id(1))
        #expect(lookup(tier, 1) == nil)
        var s = tier.stats
        #expect(s.resident == 0 && s.pinned == 1)
        #expect(tier.beginLoad(id(2), key: key(2)) == nil, "the slot is still being sent from")
        tier.unpin(hit.slot)
        s = tier.stats
        #expect(s.pinned == 0)
        #expect(tier.beginLoad(id(2), key: key(2)) == slot)
        tier.finishLoad(slot: slot, length: length(2), crc: crc(2))
        #expect(tier.stats.evictions == 0)
        // Unpinned: freed at once.
        tier.remove(id(2))
        #expect(tier.stats.resident == 0)
        // Removed while loading: the finished load is not made visible.
        let loading = try #require(tier.beginLoad(id(3), key: key(3)))
        tier.remove(id(3))
        tier.finishLoad(slot: loading, length: length(3), crc: crc(3))
        #expect(lookup(tier, 3) == nil)
        #expect(tier.stats.resident == 0)
        #expect(tier.beginLoad(id(4), key: key(4)) == loading)
    }

    @Test func zeroSlotsIsOff() {
        let tier = MemoryTier(slots: 0)
        #expect(!tier.recordAccess(id(1)) && !tier.recordAccess(id(1)) && !tier.recordAccess(id(1)))
        #expect(tier.beginLoad(id(1), key: key(1)) == nil)
        #expect(lookup(tier, 1) == nil)
        var expected = MemoryTierStats()
        expected.misses = 1
        #expect(tier.stats == expected)
    }

    /// Four threads look up, pin, load, abort and remove random blocks for 0.2 s. Each loader
    /// "writes" its block into a shadow of the memory its slot covers; each reader checks that
    /// shadow when it hits and again when it unpins, one operation later: a pinned slot reused
    /// under a reader (or a page taken by another class, or slots that overlap) would show.
    /// Mixed: blocks of three sizes, so pages move between size classes all along.
    @Test(arguments: [false, true]) func concurrentUseKeepsPinsAndSlotsStraight(mixed: Bool) throws {
        let blocks = 48
        let tier = mixed ? MemoryTier(pages: 4, pageSize: 64 << 10, smallestSlot: 16 << 10) : MemoryTier(slots: 8)
        let unit = mixed ? 16 << 10 : 4096
        let unitsPerPage = tier.pageSize / unit
        let sizes = (0..<blocks).map { mixed ? [1000, 20 << 10, 64 << 10][$0 % 3] : 4096 }
        // The shadow units the slot holding block n covers.
        let units = { @Sendable (slot: Int, n: Int) -> Range<Int> in
            let (page, offset) = tier.location(of: slot)
            let first = page * unitsPerPage + offset / unit
            return first..<first + (sizes[n] + unit - 1) / unit
        }
        let keys = (0..<blocks).map(key)
        let ids = (0..<blocks).map(id)
        let shadowLock = ConditionLock()
        nonisolated(unsafe) var shadow = Array(repeating: -1, count: tier.pages * unitsPerPage)
        let holds = { @Sendable (slot: Int, n: Int) -> Bool in shadowLock.withLock { shadow[units(slot, n)].allSatisfy { $0 == n } } }
        let state = ConditionLock()
        nonisolated(unsafe) var finished = 0
        nonisolated(unsafe) var lookups: UInt64 = 0
        nonisolated(unsafe) var hits: UInt64 = 0
        nonisolated(unsafe) var wrong = 0
        let deadline = monotonicNanos() + 200_000_000
        for t in 0..<4 {
            try OSThread.spawn(name: "tier-\(t)") {
                var rng = UInt64(t + 1) &* 0x9E37_79B9_7F4A_7C15
                var myLookups: UInt64 = 0
                var myHits: UInt64 = 0
                var bad = 0
                func next() -> Int {
                    rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    return Int(truncatingIfNeeded: rng >> 33)
                }
                // Each thread keeps its last hit pinned through its next operation.
                var held: (hit: TierHit, block: Int)?
                func release() {
                    guard let (hit, n) = held else { return }
                    if !holds(hit.slot, n) { bad += 1 }
                    tier.unpin(hit.slot)
                    held = nil
                }
                while monotonicNanos() < deadline {
                    let n = next() % blocks
                    let hit = keys[n].withUnsafeBytes { tier.lookup(ids[n], key: $0) }
                    myLookups += 1
                    if let hit {
                        myHits += 1
                        if hit.length != 1000 + n || hit.crc != UInt32(truncatingIfNeeded: n) &* 2_654_435_761 { bad += 1 }
                        if !holds(hit.slot, n) { bad += 1 }
                        release()
                        held = (hit, n)
                        if next() % 32 == 0 { tier.remove(ids[n]) }
                    } else if tier.recordAccess(ids[n]), let slot = tier.beginLoad(ids[n], key: keys[n], bytes: sizes[n]) {
                        shadowLock.withLock { for u in units(slot, n) { shadow[u] = n } }
                        if next() % 8 == 0 {
                            tier.abortLoad(slot: slot)
                        } else {
                            tier.finishLoad(slot: slot, length: 1000 + n, crc: UInt32(truncatingIfNeeded: n) &* 2_654_435_761)
                        }
                    }
                }
                release()
                state.withLock {
                    lookups += myLookups
                    hits += myHits
                    wrong += bad
                    finished += 1
                    state.broadcast()
                }
            }
        }
        state.withLock { while finished < 4 { state.wait() } }
        let s = tier.stats
        #expect(wrong == 0, "\(wrong) hits saw the wrong block")
        #expect(s.pinned == 0)
        #expect(s.resident <= tier.slots)
        if mixed { #expect(s.pagesMoved > 0) }
        #expect(s.hits == hits && s.hits + s.misses == lookups)
        #expect(hits > 0 && s.evictions > 0)
        // Every resident block is found by its own key, each in its own slot.
        var found = Set<Int>()
        for n in 0..<blocks {
            if let hit = lookup(tier, n) {
                #expect(hit.length == length(n) && hit.crc == crc(n))
                found.insert(hit.slot)
                tier.unpin(hit.slot)
            }
        }
        #expect(found.count == s.resident)
        #expect(tier.stats.pinned == 0)
    }

    // MARK: Slots sized to blocks

    /// Two pages of 64 KiB cut down to 16 KiB slots.
    func smallTier() -> MemoryTier { MemoryTier(pages: 2, pageSize: 64 << 10, smallestSlot: 16 << 10) }

    func load(_ tier: MemoryTier, _ n: Int, bytes: Int) -> Int? {
        guard let slot = tier.beginLoad(id(n), key: key(n), bytes: bytes) else { return nil }
        tier.finishLoad(slot: slot, length: bytes, crc: crc(n))
        return slot
    }

    func hits(_ tier: MemoryTier, _ n: Int) -> Bool {
        guard let hit = lookup(tier, n) else { return false }
        tier.unpin(hit.slot)
        return true
    }

    /// Eight blocks of 10 KiB fill two pages four to a page, in places that do not overlap; a
    /// ninth has no room (each is as frequent as the ones there).
    @Test func smallBlocksShareAPage() throws {
        let tier = smallTier()
        #expect(tier.classSizes == [64 << 10, 32 << 10, 16 << 10])
        var places: [(page: Int, offset: Int)] = []
        for n in 0..<8 {
            let slot = try #require(load(tier, n, bytes: 10 << 10), "block \(n) found no slot")
            places.append(tier.location(of: slot))
        }
        for (i, a) in places.enumerated() {
            #expect(a.page < 2 && a.offset + (16 << 10) <= 64 << 10)
            for b in places[(i + 1)...] { #expect(a.page != b.page || abs(a.offset - b.offset) >= 16 << 10, "\(a) overlaps \(b)") }
        }
        #expect(tier.stats.resident == 8 && tier.stats.residentBytes == 80 << 10)
        #expect((0..<8).allSatisfy { hits(tier, $0) })
        // A 20 KiB block goes in a 32 KiB slot: none is free, and no page is cold (all were just read).
        #expect(tier.beginLoad(id(20), key: key(20), bytes: 20 << 10) == nil)
        #expect(tier.beginLoad(id(21), key: key(21), bytes: (64 << 10) + 1) == nil, "a block larger than a page was given a slot")
    }

    /// A block of a page's size takes the page of small blocks that were not read since the hand
    /// passed (the blocks on it are evicted with it), never one with a pinned block, and the
    /// small blocks on the other page keep hitting.
    @Test func aColdPageMovesToTheClassThatNeedsIt() throws {
        let tier = smallTier()
        for n in 0..<8 { _ = try #require(load(tier, n, bytes: 16 << 10)) }
        // Every block just loaded is unreferenced: the hand takes the first page it reaches.
        let pinned = try #require(lookup(tier, 4))  // on page 1
        #expect(tier.location(of: pinned.slot).page == 1)
        let big = try #require(load(tier, 50, bytes: 64 << 10))
        #expect(tier.location(of: big) == (page: 0, offset: 0))
        #expect(tier.stats.pagesMoved == 1 && tier.stats.evictions == 4)
        #expect((0..<4).allSatisfy { !hits(tier, $0) } && (5..<8).allSatisfy { hits(tier, $0) } && hits(tier, 50))
        // The other page holds a pinned block: it is not taken; the large class evicts its own.
        let own = try #require(load(tier, 51, bytes: 64 << 10))
        #expect(tier.location(of: own).page == 0 && !hits(tier, 50) && (5..<8).allSatisfy { hits(tier, $0) })
        #expect(tier.stats.pagesMoved == 1)
        tier.unpin(pinned.slot)
        // Page 1 was read since the hand passed: spared (its bits cleared), block 51 evicted.
        #expect(tier.location(of: try #require(load(tier, 52, bytes: 64 << 10))).page == 0)
        #expect(tier.stats.pagesMoved == 1)
        // Not read since: now it is taken, its four blocks evicted with it.
        let evictions = tier.stats.evictions
        #expect(tier.location(of: try #require(load(tier, 53, bytes: 64 << 10))).page == 1)
        #expect(tier.stats.pagesMoved == 2 && tier.stats.evictions == evictions + 4 && tier.stats.resident == 2)
        // And back: a small block takes a cold large page.
        _ = try #require(load(tier, 60, bytes: 1000))
        #expect(tier.stats.pagesMoved == 3)
    }
}
