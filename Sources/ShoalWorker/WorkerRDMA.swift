import ShoalCore
import ShoalIO
import ShoalSys

/// The worker's RDMA (docs/DESIGN.md, "RDMA"): one device, with the whole buffer pool (I/O
/// buffers and DRAM tier slots) registered once at start, so every READ's data is written from
/// where the disk read or the fill put it. Each connection that asks gets a queue pair of its
/// own (RDMA_CONNECT), driven by its io shard.
final class WorkerRDMA: @unchecked Sendable {
    let device: any RDMADevice
    let region: RDMAMemoryRegion
    /// Writes outstanding on the device at once, over all its queue pairs, at most: past it a
    /// write waits for one to complete (each queue pair is bounded by its depth as well).
    let maxTransfers: Int
    private let lock = ConditionLock()
    private var transfers = 0
    private var highWater = 0

    init(_ settings: WorkerConfig.RDMASettings, pool: BufferPool) throws(ShoalError) {
        maxTransfers = max(1, settings.maxTransfers)
        do throws(RDMAError) {
            device = try settings.choice.open(simulatedName: "simulated-worker")
            region = try pool.register(with: device)
        } catch {
            throw ShoalError(.badRequest, "key 'rdma': \(error.message)")
        }
    }

    deinit { device.deregister(region) }

    /// Room for one more write on the device: false when `maxTransfers` are outstanding.
    func beginTransfer() -> Bool {
        lock.withLock {
            guard transfers < maxTransfers else { return false }
            transfers += 1
            highWater = max(highWater, transfers)
            return true
        }
    }

    /// `count` writes completed, failed or were flushed.
    func endTransfers(_ count: Int) {
        guard count > 0 else { return }
        lock.withLock { transfers -= count }
    }

    var transfersOutstanding: Int { lock.withLock { transfers } }
    var transfersHighWater: Int { lock.withLock { highWater } }

    /// A queue pair of `depth` connected to the client's `peer`.
    func accept(_ peer: RDMAConnectMessage, depth: Int) throws(RDMAError) -> RDMAQueue {
        // It only writes: the client can neither write nor read the worker's memory through it.
        let driver = try device.makeQueuePair(depth: depth, acceptsWrites: false)
        do { try driver.connect(to: RDMAQueuePairAddress(queuePair: peer.queuePair, gid: peer.gid, psn: peer.psn)) } catch {
            driver.close()
            throw error
        }
        return RDMAQueue(driver: driver, depth: depth)
    }
}
