import ShoalCore

/// One disk read of a plan: `count` bytes of the cache file at `fileOffset` into the caller's
/// buffer at `bufferOffset`.
public struct PlannedRead: Sendable, Equatable {
    public var fileOffset: UInt64
    public var count: Int
    public var bufferOffset: Int
}

/// What a cache read will do, decided from the index alone (no I/O): which pages to read, which
/// chunks of the block's data they cover, and the region generation the record must carry. The
/// caller submits `first` (and `second`, if any) into one buffer, then calls `complete` on the
/// bytes read. A blocking thread does both at once (`CacheDisk.read`); an io_uring shard can
/// submit the reads itself and complete the plan when they finish (`BlockCache.plan`).
public struct ReadPlan: Sendable, Equatable {
    /// The disk of the cache the plan reads (`BlockCache.file(for:)`).
    public internal(set) var disk = 0
    let page: UInt32
    let pages: UInt16
    /// The record's region generation when the plan was made; checked against the header and
    /// against the region's generation after the read.
    let generation: UInt64
    /// Bytes of the record's data area the plan reads and checks: all of it, or the chunks that
    /// cover a small range (4 KiB-aligned).
    let chunkBytes: Range<Int>
    /// The record's header when it is already known (a header cache hit): only chunks are read.
    let knownHeader: CachedHeader?
    /// The read to submit first; `second`, if any, goes with it (header and chunks of a small range).
    public let first: PlannedRead
    public let second: PlannedRead?

    /// Bytes both reads bring when they come back whole.
    public var count: Int { first.count + (second?.count ?? 0) }

    var dataBytes: Int { Int(pages) * CacheFormat.pageSize - CacheFormat.headerSize }
    var chunkShift: Int { CacheFormat.chunkShift(dataPages: dataBytes / CacheFormat.pageSize) }
    /// Whether only some chunks are read (and checked).
    var isPartial: Bool { chunkBytes.count < dataBytes }

    /// The plan for a record of `pages` pages at `page`; `range` (bytes of the block's data) asks
    /// for part of it. nil when the record does not fit a buffer of `capacity` bytes.
    init?(page: UInt32, pages: UInt16, generation: UInt64, range: Range<Int>?, capacity: Int, knownHeader: CachedHeader? = nil) {
        let count = Int(pages) * CacheFormat.pageSize
        guard count > CacheFormat.headerSize, count <= capacity else { return nil }
        self.page = page
        self.pages = pages
        self.generation = generation
        let dataBytes = count - CacheFormat.headerSize
        let shift = CacheFormat.chunkShift(dataPages: dataBytes / CacheFormat.pageSize)
        var chunks = 0..<dataBytes
        if let range, !range.isEmpty, range.upperBound <= dataBytes {
            let lower = (range.lowerBound >> shift) << shift
            let upper = min(dataBytes, ((range.upperBound + (1 << shift) - 1) >> shift) << shift)
            if upper - lower < dataBytes / 2 { chunks = lower..<upper }
        }
        chunkBytes = chunks
        let at = CacheFormat.dataStart + UInt64(page) * UInt64(CacheFormat.pageSize)
        let dataOffset = CacheFormat.headerSize + chunks.lowerBound
        let chunkRead = PlannedRead(fileOffset: at + UInt64(dataOffset), count: chunks.count, bufferOffset: dataOffset)
        if chunks.count == dataBytes {
            self.knownHeader = nil
            first = PlannedRead(fileOffset: at, count: count, bufferOffset: 0)
            second = nil
        } else if let knownHeader, knownHeader.generation == generation {
            self.knownHeader = knownHeader
            first = chunkRead
            second = nil
        } else {
            self.knownHeader = nil
            first = PlannedRead(fileOffset: at, count: CacheFormat.headerSize, bufferOffset: 0)
            second = chunkRead
        }
    }

    /// Checks the bytes the plan read into `buffer` (header at 0, data at `headerSize`) for
    /// block `key`: the region is still of the plan's generation (`generationNow`, looked up
    /// after the read), the header decodes and carries that generation and the full key, its
    /// length is the one the key implies, and the data (or the chunks read) match their CRC32C.
    /// `readComplete` is false when the reads came back short.
    func complete(_ buffer: UnsafeRawPointer, readComplete: Bool, key: BlockKey, generationNow: UInt64) -> ReadOutcome {
        key.encoded.withUnsafeBytes {
            complete(buffer, readComplete: readComplete, encodedKey: $0, expectedLength: key.expectedLength, generationNow: generationNow)
        }
    }

    /// The same, for a key given as its encoding and the length it implies.
    func complete(_ buffer: UnsafeRawPointer, readComplete: Bool, encodedKey encoded: UnsafeRawBufferPointer, expectedLength: Int,
                  generationNow: UInt64) -> ReadOutcome {
        // The region was reused while the read was in flight: the bytes may be another record's.
        guard generationNow == generation else { return .miss }
        if let knownHeader {
            guard readComplete, knownHeader.key.elementsEqual(encoded) else { return .miss }
            return verifyChunks(buffer, header: knownHeader, expectedLength: expectedLength, remember: nil)
        }
        guard readComplete, let header = CacheFormat.readHeader(buffer) else { return .corrupt(reason: "record header unreadable") }
        // Another generation's record, or the index's 40-bit tag matched another block: a miss.
        guard header.generation == generation, header.key.elementsEqual(encoded) else { return .miss }
        let length = Int(header.dataLength)
        guard length <= dataBytes, header.chunkShift == chunkShift else {
            return .corrupt(reason: "record length \(header.dataLength) does not match its index entry")
        }
        guard length == expectedLength else {
            return .corrupt(reason: "record length \(length) is not the \(expectedLength) bytes its key implies")
        }
        if isPartial {
            let cached = CachedHeader(generation: generation, key: header.key, dataLength: length, dataCRC: header.dataCRC,
                                      chunkShift: chunkShift, chunkCRCs: header.chunkCRCs(buffer))
            return verifyChunks(buffer, header: cached, expectedLength: expectedLength, remember: cached)
        }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: buffer + CacheFormat.headerSize, count: length))
        guard crc == header.dataCRC else {
            return .corrupt(reason: "CRC32C mismatch (stored \(header.dataCRC), computed \(crc))")
        }
        return .hit(length: length, crc: header.dataCRC, header: nil)
    }

    private func verifyChunks(_ buffer: UnsafeRawPointer, header: CachedHeader, expectedLength: Int, remember: CachedHeader?) -> ReadOutcome {
        let shift = header.chunkShift
        let length = header.dataLength
        guard length == expectedLength, length <= dataBytes else {
            return .corrupt(reason: "record length \(length) is not the \(expectedLength) bytes its key implies")
        }
        let data = buffer + CacheFormat.headerSize
        for i in (chunkBytes.lowerBound >> shift)..<(min(chunkBytes.upperBound, length) + (1 << shift) - 1) >> shift {
            let from = i << shift
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: data + from, count: min(length, from + (1 << shift)) - from))
            guard crc == header.chunkCRCs[i] else {
                return .corrupt(reason: "CRC32C mismatch in chunk \(i) (stored \(header.chunkCRCs[i]), computed \(crc))")
            }
        }
        return .hit(length: length, crc: header.dataCRC, header: remember)
    }
}

/// What the checks of a read plan found.
enum ReadOutcome: Equatable {
    /// The block's bytes are good; `header` is one worth keeping for later ranged reads.
    case hit(length: Int, crc: UInt32, header: CachedHeader?)
    /// Not this block (the region was reused, or another block's record): nothing to drop.
    case miss
    /// The record is this block's place but fails its checks: drop it, never serve it.
    case corrupt(reason: String)
}

/// A record header as a ranged read needs it: which record (generation, key) and the CRCs to check.
struct CachedHeader: Sendable, Equatable {
    var generation: UInt64
    var key: [UInt8]
    var dataLength: Int
    var dataCRC: UInt32
    var chunkShift: Int
    var chunkCRCs: [UInt32]
}

/// Headers by record page, at most `capacity` (about 1 KiB each for 4 MiB blocks); the oldest
/// goes first. An entry of an older generation than its region's is stale and never returned.
struct HeaderCache {
    private var entries: [UInt32: CachedHeader] = [:]
    private var ring: [UInt32] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(page: UInt32, generation: UInt64) -> CachedHeader? {
        guard let h = entries[page], h.generation == generation else { return nil }
        return h
    }

    mutating func put(page: UInt32, _ header: CachedHeader) {
        if entries.updateValue(header, forKey: page) != nil { return }
        if ring.count < capacity {
            ring.append(page)
        } else {
            entries.removeValue(forKey: ring[next])
            ring[next] = page
            next = (next + 1) % capacity
        }
    }

    mutating func remove(page: UInt32) { entries.removeValue(forKey: page) }
}
