import ShoalCore
import ShoalSys

/// Blocks kept in DRAM instead of on the cache disks: the `serveFromMemory` benchmark switch,
/// which takes the disk out of a figure. Bounded by a byte capacity; the oldest block goes
/// first. Each block keeps its full key (checked on every read) and the CRC32C it was filled
/// with, which the reply carries to the client's check.
final class MemoryBlocks: @unchecked Sendable {
    private struct Entry {
        var key: BlockKey
        var bytes: UnsafeMutableRawBufferPointer
        var crc: UInt32
    }

    private var blocks: [BlockID: Entry] = [:]
    private var order: [BlockID] = []
    private var orderStart = 0
    private var bytes: UInt64 = 0
    private let capacity: UInt64
    private let lock = ConditionLock()

    init(capacity: UInt64) { self.capacity = capacity }

    deinit { blocks.values.forEach { $0.bytes.deallocate() } }

    var count: Int { lock.withLock { blocks.count } }
    var bytesCached: UInt64 { lock.withLock { bytes } }

    /// Copies `range` of the block to `destination + range.lowerBound`; its length and CRC32C,
    /// or nil if the block is not held.
    func read(_ key: BlockKey, id: BlockID, range: Range<Int>, into destination: UnsafeMutableRawPointer) -> (Int, UInt32)? {
        lock.withLock {
            guard let e = blocks[id], e.key == key, range.upperBound <= e.bytes.count else { return nil }
            (destination + range.lowerBound).copyMemory(from: e.bytes.baseAddress! + range.lowerBound, byteCount: range.count)
            return (e.bytes.count, e.crc)
        }
    }

    func insert(_ key: BlockKey, id: BlockID, from source: UnsafeRawPointer, length: Int, crc: UInt32) {
        guard UInt64(length) <= capacity else { return }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(length, 1), alignment: 64)
        copy.baseAddress!.copyMemory(from: source, byteCount: length)
        let held = UnsafeMutableRawBufferPointer(rebasing: copy[0..<length])
        lock.withLock {
            if let old = blocks.removeValue(forKey: id) {
                bytes -= UInt64(old.bytes.count)
                old.bytes.deallocate()
            }
            while bytes + UInt64(length) > capacity, orderStart < order.count {
                let victim = order[orderStart]
                orderStart += 1
                if let e = blocks.removeValue(forKey: victim) {
                    bytes -= UInt64(e.bytes.count)
                    e.bytes.deallocate()
                }
            }
            if orderStart > 4096 && orderStart * 2 > order.count {
                order.removeFirst(orderStart)
                orderStart = 0
            }
            blocks[id] = Entry(key: key, bytes: held, crc: crc)
            order.append(id)
            bytes += UInt64(length)
        }
    }
}
