import ShoalCore
import ShoalIO
import ShoalSys

/// Region footers and record walks as recovery and the cleaner read them.
enum RegionFooter {
    /// The entries of region `r`'s footer if it is valid and of `generation`.
    static func read(_ r: UInt32, generation: UInt64, state: DiskState, slot: IOSlot) -> [CacheFormat.FooterEntry]? {
        let layout = state.layout
        let at = layout.regionStart(r) + layout.footerOffset
        guard (try? slot.read(file: state.file, at: at, count: 4096)) == 4096 else { return nil }
        let count = Int(UInt32(littleEndian: slot.base.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let size = CacheFormat.alignUp(CacheFormat.footerFixed + CacheFormat.footerEntrySize * count + 4)
        guard size <= layout.footerReserve else { return nil }
        if size > 4096 {
            guard (try? slot.read(file: state.file, at: at + 4096, count: size - 4096, bufferOffset: 4096)) == size - 4096 else { return nil }
        }
        guard let (g, entries) = CacheFormat.decodeFooter(slot.base, capacity: layout.footerReserve), g == generation else { return nil }
        return entries
    }

    /// Follows region `r`'s records while their headers are valid and of `generation`: its
    /// entries and the page after the last.
    static func walk(_ r: UInt32, generation: UInt64, state: DiskState, slot: IOSlot) -> ([CacheFormat.FooterEntry], UInt32) {
        let layout = state.layout
        var entries: [CacheFormat.FooterEntry] = []
        var page: UInt32 = 0
        while page + 2 <= layout.usablePages {
            guard (try? slot.read(file: state.file, at: layout.regionStart(r) + UInt64(page) * 4096, count: CacheFormat.headerSize)) == CacheFormat.headerSize,
                  let h = CacheFormat.readHeader(slot.base), h.generation == generation, let key = BlockKey(encoded: h.key)
            else { break }
            let pages = UInt32(CacheFormat.recordLength(dataLength: Int(h.dataLength)) / 4096)
            guard page + pages <= layout.usablePages else { break }
            entries.append(CacheFormat.FooterEntry(id: key.id, pageInRegion: page, pages: UInt16(pages), flags: 0, dataset: key.object.datasetTag))
            page += pages
        }
        return (entries, page)
    }
}

/// Rebuilding a disk's index at start, and the snapshot a clean shutdown leaves for it.
enum LogRecovery {
    /// Rebuilds the index from each region: its footer if the region was sealed in the generation
    /// of its first record, else by walking its records (a region written, or made ready, at the
    /// crash). The newest region becomes the active one. Returns it and the regions walked.
    static func fromRegions(_ regions: UInt32, state: DiskState, slot: IOSlot) -> (active: OpenRegion?, walked: Int) {
        var walked = 0
        var newest: OpenRegion?
        let layout = state.layout
        for r in 0..<regions {
            guard (try? slot.read(file: state.file, at: layout.regionStart(r), count: CacheFormat.headerSize)) == CacheFormat.headerSize,
                  let first = CacheFormat.readHeader(slot.base), first.generation != 0 else { continue }
            let generation = first.generation
            var entries: [CacheFormat.FooterEntry]
            var endPage: UInt32
            if let listed = RegionFooter.read(r, generation: generation, state: state, slot: slot) {
                entries = listed
                endPage = layout.usablePages
            } else {
                (entries, endPage) = RegionFooter.walk(r, generation: generation, state: state, slot: slot)
                walked += 1
            }
            let base = r * layout.pagesPerRegion
            state.lock.withLock {
                for e in entries {
                    let entry = IndexEntry(page: base + e.pageInRegion, pages: e.pages, flags: UInt8(truncatingIfNeeded: e.flags) & IndexEntry.pinned)
                    if let old = state.index.insert(e.id, entry) { state.count(e.dataset, old.pages, -1) }
                    state.count(e.dataset, e.pages, +1)
                }
                state.regionGeneration[Int(r)] = generation
                state.nextGeneration = max(state.nextGeneration, generation + 1)
            }
            if generation >= (newest?.generation ?? 0) { newest = OpenRegion(region: r, generation: generation, writePage: endPage, entries: entries) }
        }
        return (newest, walked)
    }

    /// The regions after `active` in ring order that the cleaner had made ready (a newer
    /// generation than the active one), with the blocks it kept in them. Their entries are
    /// walked from their records (pinned flags from the index).
    static func readyRegions(after active: OpenRegion, state: DiskState, slot: IOSlot) -> [OpenRegion] {
        var out: [OpenRegion] = []
        let n = state.layout.regionCount
        var r = (active.region + 1) % n
        while r != active.region {
            let generation = state.generation(ofRegion: r)
            guard generation > (out.last ?? active).generation else { break }
            var (entries, endPage) = RegionFooter.walk(r, generation: generation, state: state, slot: slot)
            let base = r * state.layout.pagesPerRegion
            state.lock.withLock {
                for i in entries.indices {
                    if let e = state.index.lookup(entries[i].id), e.page == base + entries[i].pageInRegion {
                        entries[i].flags = UInt16(e.flags & IndexEntry.pinned)
                    }
                }
            }
            out.append(OpenRegion(region: r, generation: generation, writePage: endPage, entries: entries))
            r = (r + 1) % n
        }
        return out
    }

    /// The snapshot of a disk whose writer and cleaner have stopped (docs/FORMAT.md): the index
    /// and the log's position. Regions made ready ahead of the writer need no field of their own:
    /// their generations are newer than the active region's.
    static func snapshot(state: DiskState, active: OpenRegion) -> [UInt8] {
        var out = CacheFormat.snapshotMagic
        state.lock.withLock {
            out.appendLE(CacheFormat.version)
            out.appendLE(state.layout.regionSize)
            out.appendLE(state.layout.regionCount)
            out.appendLE(active.region)
            out.appendLE(active.writePage)
            out.appendLE(state.nextGeneration)
            for g in state.regionGeneration { out.appendLE(g) }
            out.appendLE(UInt64(active.entries.count))
            for e in active.entries {
                out.appendLE(e.id.high); out.appendLE(e.id.low); out.appendLE(e.pageInRegion); out.appendLE(e.pages); out.appendLE(e.flags)
                out.appendLE(e.dataset)
            }
            out.appendLE(UInt32(state.stats.datasets.count))
            for (tag, d) in state.stats.datasets.sorted(by: { $0.key < $1.key }) {
                out.appendLE(tag); out.appendLE(UInt64(max(d.blocks, 0))); out.appendLE(d.bytes); out.appendLE(d.evictions)
            }
            out.appendLE(UInt64(state.index.count))
            out.reserveCapacity(out.count + state.index.count * 15 + 4)
            state.index.forEach { tag, e in
                out.appendLE(tag); out.appendLE(e.page); out.appendLE(e.pages); out.appendLE(e.flags)
            }
        }
        out.appendLE(CRC32C.checksum(out))
        return out
    }

    enum SnapshotProblem: Error {
        case damaged, mismatched
    }

    /// Loads a snapshot's bytes into `state` for a file of `regions` regions; the active region.
    static func load(_ bytes: [UInt8], regions: UInt32, state: DiskState) -> Result<OpenRegion, SnapshotProblem> {
        guard bytes.count > 12 else { return .failure(.damaged) }
        let body = Array(bytes.dropLast(4))
        var tail = ByteReader(Array(bytes.suffix(4)))
        guard CRC32C.checksum(body) == tail.u32() else { return .failure(.damaged) }
        let layout = state.layout
        var r = ByteReader(body)
        guard r.bytes(8) == CacheFormat.snapshotMagic, r.u32() == CacheFormat.version, r.u64() == layout.regionSize,
              r.u32() == regions, let active = r.u32(), let wp = r.u32(), let next = r.u64(), active < regions, wp <= layout.usablePages
        else { return .failure(.mismatched) }
        var generations: [UInt64] = []
        for _ in 0..<regions { guard let g = r.u64() else { return .failure(.mismatched) }; generations.append(g) }
        guard let activeCount = r.u64(), activeCount <= UInt64(layout.usablePages) else { return .failure(.mismatched) }
        var entries: [CacheFormat.FooterEntry] = []
        for _ in 0..<activeCount {
            guard let h = r.u64(), let l = r.u64(), let p = r.u32(), let n = r.u16(), let f = r.u16(), let d = r.u16() else { return .failure(.mismatched) }
            entries.append(CacheFormat.FooterEntry(id: BlockID(high: h, low: l), pageInRegion: p, pages: n, flags: f, dataset: d))
        }
        guard let datasetCount = r.u32(), datasetCount <= 65536 else { return .failure(.mismatched) }
        var datasets: [UInt16: DatasetBlocks] = [:]
        for _ in 0..<datasetCount {
            guard let tag = r.u16(), let b = r.u64(), let bytes = r.u64(), let ev = r.u64() else { return .failure(.mismatched) }
            var d = DatasetBlocks()
            d.blocks = Int(b)
            d.bytes = bytes
            d.evictions = ev
            datasets[tag] = d
        }
        guard let count = r.u64(), UInt64(r.remaining) == count * 15 else { return .failure(.mismatched) }
        var table = IndexTable(expectedBlocks: max(Int(count), state.lock.withLock { state.index.capacity } * 4 / 5))
        for _ in 0..<count {
            guard let t = r.u64(), let p = r.u32(), let n = r.u16(), let f = r.u8() else { return .failure(.mismatched) }
            table.insert(tag: t, IndexEntry(page: p, pages: n, flags: f))
        }
        state.lock.withLock {
            state.index = table
            state.stats.datasets = datasets
            for (i, g) in generations.enumerated() { state.regionGeneration[i] = g }
            state.nextGeneration = next
        }
        return .success(OpenRegion(region: active, generation: generations[Int(active)], writePage: wp, entries: entries))
    }
}
