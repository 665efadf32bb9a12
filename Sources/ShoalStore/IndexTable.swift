import ShoalCore

/// Where a block lives on its disk, as the index keeps it. (Public for Perf/Micro's benchmarks.)
public struct IndexEntry: Equatable, Sendable {
    /// First 4 KiB page of the record, counted from the start of the regions.
    public var page: UInt32
    /// Record length in pages (header included).
    public var pages: UInt16
    public var flags: UInt8

    public init(page: UInt32, pages: UInt16, flags: UInt8) {
        self.page = page
        self.pages = pages
        self.flags = flags
    }

    static let hit: UInt8 = 1  // read since written (CLOCK)
    static let pinned: UInt8 = 2
}

/// The per-disk index: open addressing with linear probing over parallel arrays, 12 bytes a slot
/// (a 40-bit tag of the block ID with the low 24 bits of the page, the page's high byte, a 16-bit
/// length, 8 bits of flags), sized for the expected number of blocks at 80% load: about 15 bytes
/// of DRAM per cached block. The tag also picks the home slot, so entries can be moved (growth,
/// backward-shift deletion) without the full ID. The full key is checked in the record's header
/// on every read: a tag collision (about one in 2^40 pairs) costs a miss, never a wrong byte.
public struct IndexTable: Sendable {
    private var tagAndPageLow: [UInt64]  // tag << 24 | page & 0xFFFFFF; 0 = empty (a tag is never 0)
    private var pageHigh: [UInt8]
    private var lengths: [UInt16]
    private var flagBytes: [UInt8]
    private(set) var capacity: Int
    public private(set) var count = 0

    static let bytesPerSlot = MemoryLayout<UInt64>.size + 2 * MemoryLayout<UInt8>.size + MemoryLayout<UInt16>.size
    static let maxLoad = 0.8

    public init(expectedBlocks: Int) {
        capacity = max(16, Int((Double(max(expectedBlocks, 1)) / IndexTable.maxLoad).rounded(.up)) + 1)
        tagAndPageLow = Array(repeating: 0, count: capacity)
        pageHigh = Array(repeating: 0, count: capacity)
        lengths = Array(repeating: 0, count: capacity)
        flagBytes = Array(repeating: 0, count: capacity)
    }

    /// Bytes of DRAM the table holds.
    public var memoryBytes: Int { capacity * IndexTable.bytesPerSlot }

    @inline(__always) static func tag(_ id: BlockID) -> UInt64 {
        let t = id.high >> 24
        return t == 0 ? 1 : t
    }

    /// The home slot: the tag's low 32 bits scaled onto the table (any table size works).
    @inline(__always) private func home(tag: UInt64) -> Int { Int(((tag & 0xFFFF_FFFF) &* UInt64(capacity)) >> 32) }

    @inline(__always) private func next(_ i: Int) -> Int { i + 1 == capacity ? 0 : i + 1 }

    private func find(_ id: BlockID) -> Int? {
        let t = IndexTable.tag(id)
        var i = home(tag: t)
        while true {
            let v = tagAndPageLow[i]
            if v == 0 { return nil }
            if v >> 24 == t { return i }
            i = next(i)
        }
    }

    @inline(__always) private func entry(at i: Int) -> IndexEntry {
        IndexEntry(page: UInt32(pageHigh[i]) << 24 | UInt32(truncatingIfNeeded: tagAndPageLow[i] & 0xFF_FFFF),
                   pages: lengths[i], flags: flagBytes[i])
    }

    @inline(__always) private mutating func put(_ i: Int, _ t: UInt64, _ e: IndexEntry) {
        tagAndPageLow[i] = t << 24 | UInt64(e.page & 0xFF_FFFF)
        pageHigh[i] = UInt8(truncatingIfNeeded: e.page >> 24)
        lengths[i] = e.pages
        flagBytes[i] = e.flags
    }

    private mutating func move(_ from: Int, to: Int) {
        tagAndPageLow[to] = tagAndPageLow[from]
        pageHigh[to] = pageHigh[from]
        lengths[to] = lengths[from]
        flagBytes[to] = flagBytes[from]
        tagAndPageLow[from] = 0
    }

    public func lookup(_ id: BlockID) -> IndexEntry? {
        guard let i = find(id) else { return nil }
        return entry(at: i)
    }

    mutating func setFlags(_ id: BlockID, _ flags: UInt8) {
        if let i = find(id) { flagBytes[i] |= flags }
    }

    mutating func clearFlags(_ id: BlockID, _ flags: UInt8) {
        if let i = find(id) { flagBytes[i] &= ~flags }
    }

    /// Inserts or replaces; returns the entry replaced.
    @discardableResult public mutating func insert(_ id: BlockID, _ entry: IndexEntry) -> IndexEntry? {
        insert(tag: IndexTable.tag(id), entry)
    }

    /// Inserts by tag (also for snapshot loads); returns the entry replaced.
    @discardableResult
    mutating func insert(tag t: UInt64, _ entry: IndexEntry) -> IndexEntry? {
        if Double(count + 1) > Double(capacity) * IndexTable.maxLoad { grow() }
        var i = home(tag: t)
        while true {
            let v = tagAndPageLow[i]
            if v == 0 {
                put(i, t, entry)
                count += 1
                return nil
            }
            if v >> 24 == t {
                let old = self.entry(at: i)
                put(i, t, entry)
                return old
            }
            i = next(i)
        }
    }

    /// Removes the entry for `id` if it still points at `page` (any page when nil).
    @discardableResult public mutating func remove(_ id: BlockID, ifAt page: UInt32? = nil) -> Bool {
        guard let i = find(id) else { return false }
        if let page, entry(at: i).page != page { return false }
        removeSlot(i)
        return true
    }

    /// Empties slot `hole` and shifts back the entries that probed past it.
    private mutating func removeSlot(_ hole: Int) {
        var i = hole
        tagAndPageLow[i] = 0
        count -= 1
        var j = i
        while true {
            j = next(j)
            let v = tagAndPageLow[j]
            if v == 0 { return }
            let h = home(tag: v >> 24)
            // The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
            let staysPut = i <= j ? (h > i && h <= j) : (h > i || h <= j)
            if !staysPut {
                move(j, to: i)
                i = j
            }
        }
    }

    /// Removes every entry whose page lies in `range`; returns how many (the fallback when a
    /// region's footer cannot be read).
    @discardableResult
    mutating func removeAll(inPages range: Range<UInt32>) -> Int {
        var removed = 0
        var i = 0
        while i < capacity {
            if tagAndPageLow[i] != 0 && range.contains(entry(at: i).page) {
                removeSlot(i)
                removed += 1
                continue  // slot i may now hold a shifted entry: look at it again
            }
            i += 1
        }
        return removed
    }

    /// Visits every entry with its tag (for snapshots).
    func forEach(_ body: (UInt64, IndexEntry) -> Void) {
        for i in 0..<capacity where tagAndPageLow[i] != 0 { body(tagAndPageLow[i] >> 24, entry(at: i)) }
    }

    private mutating func grow() {
        var bigger = IndexTable(expectedBlocks: capacity * 2)
        forEach { t, e in bigger.insert(tag: t, e) }
        self = bigger
    }
}
