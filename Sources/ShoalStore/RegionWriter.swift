import ShoalCore
import ShoalIO
import ShoalSys

/// Appends records to the active region, one writer per disk (as the device prefers). When the
/// active region is full it is handed to the cleaner to be sealed and the writer moves on to a
/// region the cleaner has already made clean: an insert never seals, evicts or moves a block.
/// If no clean region is ready within `cleanWaitNanos` (the cleaner is behind), the insert is
/// dropped and counted (`insertsDropped`): the block is a later miss, not a stalled request.
final class RegionWriter: @unchecked Sendable {
    private let state: DiskState
    private let cleaner: RegionCleaner
    private let cleanWaitNanos: UInt64
    /// Serialises appends; guards `open`.
    private let lock = ConditionLock()
    private var open: OpenRegion

    init(state: DiskState, cleaner: RegionCleaner, active: OpenRegion, cleanWaitNanos: UInt64) {
        self.state = state
        self.cleaner = cleaner
        self.open = active
        self.cleanWaitNanos = cleanWaitNanos
    }

    /// The active region (for the snapshot).
    var active: OpenRegion { lock.withLock { open } }

    /// Appends a block whose data is in `slot` at `CacheFormat.headerSize`: writes the header in
    /// front of it and the whole record with one O_DIRECT write. False if it was dropped because
    /// no clean region was ready.
    func append(key: BlockKey, id: BlockID, slot: IOSlot, length: Int, crc: UInt32, chunkCRCs: [UInt32]? = nil, pinned: Bool) throws(ShoalError) -> Bool {
        let layout = state.layout
        let encoded = key.encoded
        guard encoded.count <= CacheFormat.maxKeyBytes else { throw ShoalError(.tooLarge, "block key too long to cache") }
        guard length == key.expectedLength else {
            throw ShoalError(.badRequest, "block \(key) has \(length) bytes where its key implies \(key.expectedLength); not cached")
        }
        let count = CacheFormat.recordLength(dataLength: length)
        let pages = UInt32(count / 4096)
        guard pages <= layout.usablePages / 2, count <= slot.capacity else {
            throw ShoalError(.tooLarge, "a record of \(count) bytes does not fit a region of \(layout.regionSize) (use a larger regionSize)")
        }
        // The header and padding go into the caller's buffer before the writer lock is taken.
        // The chunks' CRCs: the filler's, when it computed them as it checked the block (the
        // bytes have not moved since), else read here.
        let chunks: [UInt32]
        if let given = chunkCRCs, given.count == CacheFormat.chunkCount(dataLength: length, shift: CacheFormat.chunkShift(dataLength: length)) {
            chunks = given
        } else {
            chunks = CacheFormat.chunkCRCs(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: length))
        }
        let pad = count - CacheFormat.headerSize - length
        if pad > 0 { CacheFormat.memsetZero(slot.base + CacheFormat.headerSize + length, pad) }
        lock.lock()
        defer { lock.unlock() }
        if let failure = state.lock.withLock({ state.stats.failure }) {
            throw ShoalError(.internal, "cache disk '\(state.path)' is out of service: \(failure)")
        }
        if open.writePage + pages > layout.usablePages {
            guard let next = cleaner.exchange(full: open, waitNanos: cleanWaitNanos) else {
                state.lock.withLock { state.stats.insertsDropped += 1 }
                return false
            }
            open = next
            state.lock.withLock { state.stats.regionSwitches += 1 }
        }
        let page = open.region * layout.pagesPerRegion + open.writePage
        CacheFormat.writeHeader(into: slot.base, key: encoded, generation: open.generation, dataLength: UInt32(length), dataCRC: crc, chunkCRCs: chunks)
        try state.write(slot, count: count, at: layout.byteOffset(page: page))
        let flags: UInt8 = pinned ? IndexEntry.pinned : 0
        let tag = key.object.datasetTag
        state.lock.withLock {
            if let old = state.index.insert(id, IndexEntry(page: page, pages: UInt16(pages), flags: flags)) { state.count(tag, old.pages, -1) }
            state.count(tag, UInt16(pages), +1)
            state.stats.bytesWritten += UInt64(count)
        }
        open.entries.append(CacheFormat.FooterEntry(id: id, pageInRegion: open.writePage, pages: UInt16(pages), flags: UInt16(flags), dataset: tag))
        open.writePage += pages
        return true
    }
}
