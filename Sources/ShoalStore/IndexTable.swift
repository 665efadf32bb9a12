import ShoalCore

/// Where a block lives on its disk, as the index keeps it.
struct IndexEntry: Equatable {
    /// First 4 KiB page of the record, counted from the start of the regions.
    var page: UInt32
    /// Record length in pages (header included).
    var pages: UInt16
    var flags: UInt8

    static let hit: UInt8 = 1  // read since written (CLOCK)
    static let pinned: UInt8 = 2
}

/// The per-disk index: open addressing with linear probing over parallel arrays, 11 bytes a slot
/// (a 32-bit tag and a 32-bit page, a 16-bit length, 8 bits of flags), at most 80% full, so
/// about 14 bytes of DRAM per cached block. The tag is 32 bits of the block ID and also picks the
/// home slot, so entries can be moved (growth, backward-shift deletion) without the full ID. The
/// full key is checked in the record's header on every read: a tag collision costs a miss,
/// never a wrong byte.
struct IndexTable {
    private var tagAndPage: [UInt64]  // tag << 32 | page; 0 = empty (a tag is never 0)
    private var lengths: [UInt16]
    private var flagBytes: [UInt8]
    private var mask: Int
    private(set) var count = 0

    init(expectedBlocks: Int) {
        var size = 16
        while Double(size) * 0.8 < Double(max(expectedBlocks, 1)) { size <<= 1 }
        tagAndPage = Array(repeating: 0, count: size)
        lengths = Array(repeating: 0, count: size)
        flagBytes = Array(repeating: 0, count: size)
        mask = size - 1
    }

    var capacity: Int { mask + 1 }
    /// Bytes of DRAM the table holds.
    var memoryBytes: Int { capacity * (MemoryLayout<UInt64>.size + MemoryLayout<UInt16>.size + MemoryLayout<UInt8>.size) }

    @inline(__always) static func tag(_ id: BlockID) -> UInt64 {
        let t = id.high >> 32
        return t == 0 ? 1 : t
    }

    @inline(__always) private func home(tag: UInt64) -> Int { Int(truncatingIfNeeded: tag) & mask }

    private func find(_ id: BlockID) -> Int? {
        let t = IndexTable.tag(id)
        var i = home(tag: t)
        while true {
            let v = tagAndPage[i]
            if v == 0 { return nil }
            if v >> 32 == t { return i }
            i = (i + 1) & mask
        }
    }

    func lookup(_ id: BlockID) -> IndexEntry? {
        guard let i = find(id) else { return nil }
        return entry(at: i)
    }

    @inline(__always) private func entry(at i: Int) -> IndexEntry {
        IndexEntry(page: UInt32(truncatingIfNeeded: tagAndPage[i]), pages: lengths[i], flags: flagBytes[i])
    }

    mutating func setFlags(_ id: BlockID, _ flags: UInt8) {
        if let i = find(id) { flagBytes[i] |= flags }
    }

    mutating func clearFlags(_ id: BlockID, _ flags: UInt8) {
        if let i = find(id) { flagBytes[i] &= ~flags }
    }

    /// Inserts or replaces; returns the entry replaced.
    @discardableResult
    mutating func insert(_ id: BlockID, _ entry: IndexEntry) -> IndexEntry? {
        if Double(count + 1) > Double(capacity) * 0.8 { grow() }
        let t = IndexTable.tag(id)
        var i = home(tag: t)
        while true {
            let v = tagAndPage[i]
            if v == 0 {
                put(i, t, entry)
                count += 1
                return nil
            }
            if v >> 32 == t {
                let old = self.entry(at: i)
                put(i, t, entry)
                return old
            }
            i = (i + 1) & mask
        }
    }

    @inline(__always) private mutating func put(_ i: Int, _ t: UInt64, _ e: IndexEntry) {
        tagAndPage[i] = t << 32 | UInt64(e.page)
        lengths[i] = e.pages
        flagBytes[i] = e.flags
    }

    /// Removes the entry for `id` if it still points at `page` (any page when nil).
    @discardableResult
    mutating func remove(_ id: BlockID, ifAt page: UInt32? = nil) -> Bool {
        guard let i = find(id) else { return false }
        if let page, UInt32(truncatingIfNeeded: tagAndPage[i]) != page { return false }
        removeSlot(i)
        return true
    }

    /// Empties slot `hole` and shifts back the entries that probed past it.
    private mutating func removeSlot(_ hole: Int) {
        var i = hole
        tagAndPage[i] = 0
        count -= 1
        var j = i
        while true {
            j = (j + 1) & mask
            let v = tagAndPage[j]
            if v == 0 { return }
            let h = home(tag: v >> 32)
            // The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
            let staysPut = i <= j ? (h > i && h <= j) : (h > i || h <= j)
            if !staysPut {
                tagAndPage[i] = v
                lengths[i] = lengths[j]
                flagBytes[i] = flagBytes[j]
                tagAndPage[j] = 0
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
            let v = tagAndPage[i]
            if v != 0 && range.contains(UInt32(truncatingIfNeeded: v)) {
                removeSlot(i)
                removed += 1
                continue  // slot i may now hold a shifted entry: look at it again
            }
            i += 1
        }
        return removed
    }

    /// Visits every entry (for snapshots).
    func forEach(_ body: (UInt64, IndexEntry) -> Void) {
        for i in 0..<capacity where tagAndPage[i] != 0 { body(tagAndPage[i] >> 32, entry(at: i)) }
    }

    /// Inserts by tag (snapshot load).
    mutating func insert(tag t: UInt64, _ entry: IndexEntry) {
        if Double(count + 1) > Double(capacity) * 0.8 { grow() }
        var i = home(tag: t)
        while true {
            let v = tagAndPage[i]
            if v == 0 { put(i, t, entry); count += 1; return }
            if v >> 32 == t { put(i, t, entry); return }
            i = (i + 1) & mask
        }
    }

    private mutating func grow() {
        var bigger = IndexTable(expectedBlocks: 0)
        let size = capacity * 2
        bigger.tagAndPage = Array(repeating: 0, count: size)
        bigger.lengths = Array(repeating: 0, count: size)
        bigger.flagBytes = Array(repeating: 0, count: size)
        bigger.mask = size - 1
        forEach { t, e in bigger.insert(tag: t, e) }
        self = bigger
    }
}
