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

    init(_ settings: WorkerConfig.RDMASettings, pool: BufferPool) throws(ShoalError) {
        do throws(RDMAError) {
            device = settings.simulated
                ? SimulatedRDMADevice(name: "simulated-worker")
                : try VerbsRDMADevice(name: settings.device, gidAddress: settings.gidAddress)
            region = try pool.register(with: device)
        } catch {
            throw ShoalError(.badRequest, "key 'rdma': \(error.message)")
        }
    }

    deinit { device.deregister(region) }

    /// A queue pair of `depth` connected to the client's `peer`.
    func accept(_ peer: RDMAConnectMessage, depth: Int) throws(RDMAError) -> RDMAQueue {
        let driver = try device.makeQueuePair(depth: depth)
        do { try driver.connect(to: RDMAQueuePairAddress(queuePair: peer.queuePair, gid: peer.gid)) } catch {
            driver.close()
            throw error
        }
        return RDMAQueue(driver: driver, depth: depth)
    }
}
