import ShoalCore
import ShoalIO
import ShoalSys

/// The background half of the region log, on a thread of its own: it seals the regions the
/// writer filled (writes their footers) and keeps `target` clean regions ready ahead of the
/// writer. Cleaning a region evicts it (the oldest, next in ring order): its blocks leave the
/// index, except those read since they were written (CLOCK, up to half a region) and pinned ones,
/// which are compacted to the front of the region with its new generation (each moves only
/// backwards, so none is overwritten before it has moved). Requests never wait on this work.
final class RegionCleaner: @unchecked Sendable {
    enum Job {
        case seal(OpenRegion)
        case clean(UInt32)
    }

    private enum Phase {
        case notStarted, running, stopping, stopped
    }

    private let state: DiskState
    private let pins: PinSet
    /// The cleaner's own buffer (footers, moved blocks); recovery borrows it before `start`.
    let slot: IOSlot
    private let pool: BufferPool
    let target: Int

    /// Guards everything below; signalled when work arrives, a region is ready, or the phase changes.
    private let queue = ConditionLock()
    private var ready: [OpenRegion] = []
    private var sealing: [OpenRegion] = []
    private var nextToClean: UInt32 = 0
    private var phase = Phase.notStarted
    private var busy = false
    /// A cleaner that could not clean (the disk failed) makes no more regions ready.
    private var halted = false
    /// Test hook: a paused cleaner takes no new jobs.
    private var paused = false

    init(state: DiskState, pins: PinSet) throws(ShoalError) {
        self.state = state
        self.pins = pins
        target = min(1, Int(state.layout.regionCount) - 1)
        do {
            pool = try BufferPool(bufferSize: max(state.layout.footerReserve, Int(BlockLayout.maxBlockSize) + CacheFormat.headerSize), count: 1)
        } catch {
            throw ShoalError(.internal, "cannot allocate the maintenance buffer for '\(state.path)': \(error)")
        }
        slot = pool.acquire()!
    }

    /// Starts the thread; `ready` are regions already clean (recovered from a snapshot), and the
    /// next region to clean follows the last of them (or `active`) in ring order.
    func start(active: OpenRegion, ready: [OpenRegion]) throws(ShoalError) {
        queue.withLock {
            self.ready = ready
            nextToClean = ((ready.last ?? active).region + 1) % state.layout.regionCount
            phase = .running
        }
        do {
            try OSThread.spawn(name: "shoal-cleaner") { [self] in run() }
        } catch {
            queue.withLock { phase = .stopped }
            throw ShoalError(.internal, "cannot start the region cleaner for '\(state.path)': \(error)")
        }
    }

    /// Seals the regions already handed over, then stops the thread and waits for it.
    func stop() {
        queue.lock()
        defer { queue.unlock() }
        guard phase == .running || phase == .stopping else { return }
        phase = .stopping
        queue.broadcast()
        while phase != .stopped { queue.wait() }
    }

    /// The writer's side: hands over the full region `full` to be sealed and takes the next clean
    /// one, waiting at most `waitNanos` for the cleaner. nil (and `full` stays active) if none is ready.
    func exchange(full: OpenRegion, waitNanos: UInt64) -> OpenRegion? {
        queue.lock()
        defer { queue.unlock() }
        if ready.isEmpty, phase == .running, !halted, waitNanos > 0 {
            let deadline = monotonicNanos() + waitNanos
            while ready.isEmpty, phase == .running, !halted, monotonicNanos() < deadline { queue.wait(untilNanos: deadline) }
        }
        guard !ready.isEmpty else { return nil }
        let next = ready.removeFirst()
        sealing.append(full)
        queue.broadcast()
        return next
    }

    /// Regions ready ahead of the writer (for the snapshot and tests).
    var readyRegions: [OpenRegion] { queue.withLock { ready } }

    /// Test hook: waits until nothing is left to seal and the ready regions are made (or the cleaner cannot make them).
    func waitUntilIdle() {
        queue.lock()
        defer { queue.unlock() }
        while phase == .running, !paused, busy || !sealing.isEmpty || (ready.count < target && !halted) { queue.wait() }
    }

    /// Test hook: a paused cleaner finishes its current job and takes no more until resumed.
    func setPaused(_ value: Bool) {
        queue.withLock {
            paused = value
            queue.broadcast()
        }
    }

    private func run() {
        while let job = nextJob() {
            var made: OpenRegion?
            switch job {
            case .seal(let region): seal(region)
            case .clean(let r): made = clean(r)
            }
            queue.withLock {
                if let made { ready.append(made) } else if case .clean = job { halted = true }
                queue.broadcast()
            }
        }
    }

    /// The next job, waiting for one; nil once stopping and every handed-over region is sealed.
    private func nextJob() -> Job? {
        queue.lock()
        defer { queue.unlock() }
        busy = false
        queue.broadcast()
        while true {
            if !sealing.isEmpty, !paused || phase == .stopping {
                busy = true
                return .seal(sealing.removeFirst())
            }
            if phase == .stopping {
                phase = .stopped
                queue.broadcast()
                return nil
            }
            if !paused, !halted, ready.count < target {
                let r = nextToClean
                nextToClean = (r + 1) % state.layout.regionCount
                busy = true
                return .clean(r)
            }
            queue.wait()
        }
    }

    /// Writes the footer of a full region.
    private func seal(_ region: OpenRegion) {
        guard !state.isFailed else { return }
        let layout = state.layout
        guard CacheFormat.encodeFooter(into: slot.base, capacity: layout.footerReserve, generation: region.generation, entries: region.entries) else {
            state.fail("footer of region \(region.region) overflowed")
            return
        }
        try? state.write(slot, count: layout.footerReserve, at: layout.regionStart(region.region) + layout.footerOffset)
    }

    /// Evicts region `r` and returns it clean, with the blocks it kept at its front; nil if the
    /// disk failed.
    private func clean(_ r: UInt32) -> OpenRegion? {
        guard !state.isFailed else { return nil }
        let layout = state.layout
        let oldGeneration = state.generation(ofRegion: r)
        var listed: [CacheFormat.FooterEntry]?
        if oldGeneration != 0 { listed = RegionFooter.read(r, generation: oldGeneration, state: state, slot: slot) }
        let newGeneration = state.takeGeneration()
        let base = r * layout.pagesPerRegion
        var keep: [(CacheFormat.FooterEntry, IndexEntry)] = []
        state.lock.withLock {
            state.regionGeneration[Int(r)] = newGeneration  // readers of the old records now miss
            guard let listed else {
                let removed = state.index.removeAll(inPages: base..<(base + layout.pagesPerRegion))
                state.stats.evictions += UInt64(removed)
                return
            }
            var keptPages: UInt32 = 0
            for e in listed {
                let page = base + e.pageInRegion
                guard let current = state.index.lookup(e.id), current.page == page else { continue }
                let pinned = current.flags & IndexEntry.pinned != 0
                let hot = current.flags & IndexEntry.hit != 0
                // Hot blocks may take half the region; pinned ones are always kept.
                if pinned || (hot && keptPages + UInt32(current.pages) <= layout.usablePages / 2) {
                    // Out of the index until it has moved: its old record is not of the new
                    // generation, and a plan for it could read whatever is written there next
                    // in this generation (even a fresh copy of the same block, half written).
                    state.index.remove(e.id, ifAt: page)
                    state.count(e.dataset, current.pages, -1)
                    keep.append((e, current))
                    keptPages += UInt32(current.pages)
                } else {
                    state.index.remove(e.id, ifAt: page)
                    state.stats.evictions += 1
                    state.count(e.dataset, current.pages, -1, evicted: true)
                }
            }
        }
        var open = OpenRegion(region: r, generation: newGeneration, writePage: 0, entries: [])
        for (e, current) in keep {
            let count = Int(current.pages) * 4096
            let oldPage = base + e.pageInRegion
            let read = state.timedRead { () throws(SysError) -> Bool in
                try slot.read(file: state.file, at: layout.byteOffset(page: oldPage), count: count) == count
            }
            guard let ok = read else { return nil }
            // A pinned block stays only while a pin still covers it (pins expire and are removed).
            var flags = current.flags & ~IndexEntry.hit
            var header: CacheFormat.Header?
            if ok, let h = CacheFormat.readHeader(slot.base) {
                header = h
                if flags & IndexEntry.pinned != 0, !(BlockKey(encoded: h.key).map(pins.covers) ?? false) {
                    flags &= ~IndexEntry.pinned
                    if current.flags & IndexEntry.hit == 0 { header = nil }
                }
            }
            guard let header, header.generation == oldGeneration,
                  CRC32C.checksum(UnsafeRawBufferPointer(start: slot.base + CacheFormat.headerSize, count: Int(header.dataLength))) == header.dataCRC,
                  open.writePage + UInt32(current.pages) <= layout.usablePages
            else {
                state.lock.withLock {
                    state.stats.evictions += 1
                    state.stats.datasets[e.dataset]?.evictions += 1
                }
                continue
            }
            CacheFormat.writeHeader(into: slot.base, key: header.key, generation: newGeneration, dataLength: header.dataLength, dataCRC: header.dataCRC,
                                    chunkCRCs: header.chunkCRCs(slot.base))
            let newPage = base + open.writePage
            do { try state.write(slot, count: count, at: layout.byteOffset(page: newPage)) } catch { return nil }
            let moved: Bool = state.lock.withLock {
                // A reader that missed during the move may have refilled the block: keep that copy.
                guard state.index.lookup(e.id) == nil else { return false }
                state.index.insert(e.id, IndexEntry(page: newPage, pages: current.pages, flags: flags))
                state.count(e.dataset, current.pages, +1)
                state.stats.reinserted += 1
                state.stats.bytesWritten += UInt64(count)
                return true
            }
            guard moved else { continue }
            open.entries.append(CacheFormat.FooterEntry(id: e.id, pageInRegion: open.writePage, pages: current.pages, flags: UInt16(flags), dataset: e.dataset))
            open.writePage += UInt32(current.pages)
        }
        return open
    }
}
