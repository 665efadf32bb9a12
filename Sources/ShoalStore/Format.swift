import ShoalCore

/// The on-disk format of a cache file (docs/FORMAT.md). All integers little-endian.
enum CacheFormat {
    static let version: UInt32 = 4
    static let alignment = 4096
    /// Superblock at offset 0; regions start at 1 MiB.
    static let dataStart: UInt64 = 1 << 20
    static let superMagic: [UInt8] = Array("SHOALCF1".utf8)
    static let recordMagic: UInt32 = 0x4B4C_4253  // "SBLK"
    static let footerMagic: UInt32 = 0x5254_4653  // "SFTR"
    static let snapshotMagic: [UInt8] = Array("SHOALSN4".utf8)
    static let pageSize = 4096
    /// Footer entry: id.high u64 | id.low u64 | page in region u32 | pages u16 | flags u16 | dataset tag u16 | 0 u16.
    static let footerEntrySize = 28
    static let footerFixed = 24
    static let headerSize = 4096
    static let headerFixed = 32
    /// A record's data is checksummed per chunk too, so a small read checks only the chunks it
    /// touches: at most this many chunks of at least 16 KiB each.
    static let maxChunks = 512
    static let minChunkShift = 14
    static let maxKeyBytes = headerSize - headerFixed - 4 * maxChunks

    /// The chunk size (as a shift) of a record whose data takes `dataPages` 4 KiB pages: the
    /// smallest power of two from 16 KiB that needs at most `maxChunks` chunks. It depends only
    /// on the page count, which the index holds, so a reader knows it before the header arrives.
    static func chunkShift(dataPages: Int) -> Int {
        var shift = minChunkShift
        while (dataPages * pageSize + (1 << shift) - 1) >> shift > maxChunks { shift += 1 }
        return shift
    }

    static func chunkCount(dataLength: Int, shift: Int) -> Int { (dataLength + (1 << shift) - 1) >> shift }

    /// The chunk shift of a record of `dataLength` bytes of data.
    static func chunkShift(dataLength: Int) -> Int { chunkShift(dataPages: alignUp(dataLength) / pageSize) }

    /// CRC32C of each chunk of `data`.
    static func chunkCRCs(_ data: UnsafeRawBufferPointer) -> [UInt32] {
        let shift = chunkShift(dataLength: data.count)
        let size = 1 << shift
        return (0..<chunkCount(dataLength: data.count, shift: shift)).map { i in
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[(i * size)..<min(data.count, (i + 1) * size)]))
        }
    }

    static func alignUp(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }
    static func recordLength(dataLength: Int) -> Int { headerSize + alignUp(dataLength) }

    /// Superblock: magic[8] | version u32 | regionSize u64 | regionCount u32 | crc32c u32 (of the bytes before it).
    static func encodeSuperblock(regionSize: UInt64, regionCount: UInt32) -> [UInt8] {
        var out = superMagic
        out.appendLE(version)
        out.appendLE(regionSize)
        out.appendLE(regionCount)
        out.appendLE(CRC32C.checksum(out))
        return out
    }

    enum SuperblockState: Equatable {
        case valid(regionSize: UInt64, regionCount: UInt32)
        case empty
        case otherVersion(UInt32)
        case corrupt
    }

    static func decodeSuperblock(_ p: UnsafeRawBufferPointer) -> SuperblockState {
        let bytes = Array(p.prefix(28))
        if bytes.allSatisfy({ $0 == 0 }) { return .empty }
        guard Array(bytes[0..<8]) == superMagic else { return .corrupt }
        var r = ByteReader(Array(bytes[8...]))
        guard let v = r.u32(), let rs = r.u64(), let rc = r.u32(), let crc = r.u32() else { return .corrupt }
        guard crc == CRC32C.checksum(Array(bytes[0..<24])) else { return .corrupt }
        guard v == version else { return .otherVersion(v) }
        return .valid(regionSize: rs, regionCount: rc)
    }

    /// Record header: magic u32 | version u16 | keyLength u16 | generation u64 | dataLength u32 |
    /// dataCRC u32 | chunkShift u8 | 0 u8 | chunkCount u16 | headerCRC u32 | key bytes | pad to 4 |
    /// chunkCount × chunk CRC32C u32. headerCRC covers bytes 0..<28, the key and the chunk CRCs.
    static func writeHeader(into p: UnsafeMutableRawPointer, key: [UInt8], generation: UInt64, dataLength: UInt32, dataCRC: UInt32,
                            chunkCRCs: [UInt32]) {
        memsetZero(p, headerSize)
        let shift = chunkShift(dataPages: alignUp(Int(dataLength)) / pageSize)
        p.storeBytes(of: recordMagic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: UInt16(version).littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: UInt16(key.count).littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: generation.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: dataLength.littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: dataCRC.littleEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: UInt8(shift), toByteOffset: 24, as: UInt8.self)
        p.storeBytes(of: UInt16(chunkCRCs.count).littleEndian, toByteOffset: 26, as: UInt16.self)
        key.withUnsafeBytes { (p + headerFixed).copyMemory(from: $0.baseAddress!, byteCount: key.count) }
        let table = headerFixed + (key.count + 3) & ~3
        for (i, c) in chunkCRCs.enumerated() { p.storeBytes(of: c.littleEndian, toByteOffset: table + 4 * i, as: UInt32.self) }
        p.storeBytes(of: headerCRC(p, keyLength: key.count, chunks: chunkCRCs.count).littleEndian, toByteOffset: 28, as: UInt32.self)
    }

    private static func headerCRC(_ p: UnsafeRawPointer, keyLength: Int, chunks: Int) -> UInt32 {
        let table = headerFixed + (keyLength + 3) & ~3
        var crc = CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: 28))
        crc = CRC32C.checksum(UnsafeRawBufferPointer(start: p + headerFixed, count: keyLength), continuing: crc)
        return CRC32C.checksum(UnsafeRawBufferPointer(start: p + table, count: 4 * chunks), continuing: crc)
    }

    struct Header {
        var key: [UInt8]
        var generation: UInt64
        var dataLength: UInt32
        var dataCRC: UInt32
        var chunkShift: Int
        var chunkCount: Int
        /// Where the chunk CRC table starts in the header.
        var tableOffset: Int

        /// The stored CRC32C of chunk `i` of the header at `p`.
        func chunkCRC(_ p: UnsafeRawPointer, _ i: Int) -> UInt32 {
            UInt32(littleEndian: p.loadUnaligned(fromByteOffset: tableOffset + 4 * i, as: UInt32.self))
        }

        func chunkCRCs(_ p: UnsafeRawPointer) -> [UInt32] { (0..<chunkCount).map { chunkCRC(p, $0) } }
    }

    /// Decodes a record header; nil unless magic, version, bounds, chunk layout and CRC check out.
    static func readHeader(_ p: UnsafeRawPointer) -> Header? {
        guard UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == recordMagic,
              UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) == UInt16(version)
        else { return nil }
        let keyLength = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)))
        let dataLength = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        let shift = Int(p.load(fromByteOffset: 24, as: UInt8.self))
        let chunks = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 26, as: UInt16.self)))
        guard keyLength <= maxKeyBytes, chunks <= maxChunks, dataLength <= UInt32(Int32.max),
              shift == chunkShift(dataPages: alignUp(Int(dataLength)) / pageSize),
              chunks == chunkCount(dataLength: Int(dataLength), shift: shift)
        else { return nil }
        let stored = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 28, as: UInt32.self))
        guard headerCRC(p, keyLength: keyLength, chunks: chunks) == stored else { return nil }
        return Header(
            key: Array(UnsafeRawBufferPointer(start: p + headerFixed, count: keyLength)),
            generation: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            dataLength: dataLength,
            dataCRC: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)),
            chunkShift: shift, chunkCount: chunks, tableOffset: headerFixed + (keyLength + 3) & ~3)
    }

    /// Bytes reserved at the end of each region for its footer: room for the most records a
    /// region can hold (each at least two pages).
    static func footerReserve(regionSize: UInt64) -> Int {
        let maxEntries = Int(regionSize) / (2 * pageSize)
        return alignUp(footerFixed + footerEntrySize * maxEntries + 4)
    }

    struct FooterEntry {
        var id: BlockID
        var pageInRegion: UInt32
        var pages: UInt16
        var flags: UInt16
        var dataset: UInt16
    }

    /// Footer: magic u32 | version u16 | 0 u16 | generation u64 | count u32 | 0 u32 | entries | crc32c u32.
    static func encodeFooter(into p: UnsafeMutableRawPointer, capacity: Int, generation: UInt64, entries: [FooterEntry]) -> Bool {
        let size = footerFixed + footerEntrySize * entries.count
        guard size + 4 <= capacity else { return false }
        memsetZero(p, alignUp(size + 4))
        p.storeBytes(of: footerMagic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: UInt16(version).littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: generation.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: UInt32(entries.count).littleEndian, toByteOffset: 16, as: UInt32.self)
        var o = footerFixed
        for e in entries {
            p.storeBytes(of: e.id.high.littleEndian, toByteOffset: o, as: UInt64.self)
            p.storeBytes(of: e.id.low.littleEndian, toByteOffset: o + 8, as: UInt64.self)
            p.storeBytes(of: e.pageInRegion.littleEndian, toByteOffset: o + 16, as: UInt32.self)
            p.storeBytes(of: e.pages.littleEndian, toByteOffset: o + 20, as: UInt16.self)
            p.storeBytes(of: e.flags.littleEndian, toByteOffset: o + 22, as: UInt16.self)
            p.storeBytes(of: e.dataset.littleEndian, toByteOffset: o + 24, as: UInt16.self)
            o += footerEntrySize
        }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: o))
        p.storeBytes(of: crc.littleEndian, toByteOffset: o, as: UInt32.self)
        return true
    }

    /// Decodes a footer; nil unless magic, version, bounds and CRC32C all check out.
    static func decodeFooter(_ p: UnsafeRawPointer, capacity: Int) -> (generation: UInt64, entries: [FooterEntry])? {
        guard capacity >= footerFixed + 4,
              UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == footerMagic,
              UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) == UInt16(version)
        else { return nil }
        let generation = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let count = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let size = footerFixed + footerEntrySize * count
        guard count <= (capacity - footerFixed - 4) / footerEntrySize else { return nil }
        let stored = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: size, as: UInt32.self))
        guard CRC32C.checksum(UnsafeRawBufferPointer(start: p, count: size)) == stored else { return nil }
        var entries: [FooterEntry] = []
        entries.reserveCapacity(count)
        var o = footerFixed
        for _ in 0..<count {
            entries.append(FooterEntry(
                id: BlockID(high: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)),
                            low: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o + 8, as: UInt64.self))),
                pageInRegion: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o + 16, as: UInt32.self)),
                pages: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o + 20, as: UInt16.self)),
                flags: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o + 22, as: UInt16.self)),
                dataset: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o + 24, as: UInt16.self))))
            o += footerEntrySize
        }
        return (generation, entries)
    }

    static func memsetZero(_ p: UnsafeMutableRawPointer, _ n: Int) {
        p.initializeMemory(as: UInt8.self, repeating: 0, count: n)
    }
}
