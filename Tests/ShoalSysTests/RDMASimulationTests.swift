#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalCore
@testable import ShoalIO
@testable import ShoalSys

/// The RDMA transport's logic on the SIMULATED device (an in-process simulation, not RDMA):
/// chains and credits, error completions, partly failed posts. What a real verbs stack shows is
/// checked by `shoal selftest rdma` in the soft-RoCE guest (Tools/rdma-vm.sh).
@Suite struct RDMASimulationTests {
    @Test func theSelfTestPassesOnTheSimulationAndSaysItIsOne() throws {
        let report = try RDMASelfTest.run(SimulatedRDMADevice(), depth: 16, bandwidthBytes: 32 << 20)
        #expect(report.simulated && report.device == "simulated0")
        #expect(report.passed, "\(report.checks.filter { !$0.passed })")
        #expect(report.highWater <= report.queueDepth && report.highWater > 1)
        #expect(report.checks.count == 6)
        #expect(report.workRequests > 0 && report.bytesPerWorkRequest > 64)
    }

    /// Random chains against a queue of 8, polled at random: the device's own count of work
    /// requests on its send queue never goes above 8, and every byte lands where it was sent.
    @Test func creditsKeepTheDevicesQueueWithinItsDepth() throws {
        let device = SimulatedRDMADevice()
        let size = 1 << 20
        let src = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer {
            src.deallocate()
            dst.deallocate()
        }
        for i in 0..<size { src.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ 7), toByteOffset: i, as: UInt8.self) }
        let a = try device.makeQueuePair(depth: 8), b = try device.makeQueuePair(depth: 8)
        try a.connect(to: b.address)
        try b.connect(to: a.address)
        let srcMR = try device.register(src, length: size), dstMR = try device.register(dst, length: size)
        let q = RDMAQueue(driver: a, depth: 8)
        var rng = SplitMix(seed: 11)
        var offset = 0
        var refusals = 0
        while offset < size {
            let n = 1 + Int(rng.next() % 6)
            let writes = (0..<n).compactMap { k -> RDMAWrite? in
                let at = offset + k * 4096
                guard at < size else { return nil }
                return RDMAWrite(local: src + at, length: 4096, lkey: srcMR.lkey, remoteAddress: dstMR.address + UInt64(at), rkey: dstMR.rkey)
            }
            if try q.write(writes) != nil {
                offset += writes.count * 4096
            } else {
                refusals += 1
                _ = try q.poll(max: Int(rng.next() % 3) + 1)
            }
            if rng.next() % 4 == 0 { _ = try q.poll(max: 1) }
        }
        while q.credits.outstanding > 0 { _ = try q.poll() }
        #expect(memcmp(src, dst, size) == 0)
        #expect(refusals > 0, "the queue never filled: the test did not test it")
        #expect(q.credits.highWater == 8)
        #expect((a as! SimulatedQueuePair).highWater <= 8)
    }

    /// A write the remote end refuses: an error completion, the queue pair stops, the next write
    /// throws (the caller falls back to TCP for that peer); a chain longer than the queue and a
    /// zero-byte write are refused before they reach the device.
    @Test func anErrorCompletionStopsTheQueuePair() throws {
        let f = try OneQueue(depth: 4)
        defer { f.buffer.deallocate() }
        let (device, q, ok) = (f.device, f.queue, f.ok)
        #expect(throws: RDMAError.self) { try q.write(Array(repeating: ok, count: 5)) }
        var empty = ok
        empty.length = 0
        #expect(throws: RDMAError.self) { try q.write([empty]) }
        let first = try #require(try q.write([ok]))
        #expect(try q.wait(for: first) == .success)
        var faults = SimulatedRDMADevice.Faults()
        faults.failWrites = true
        device.inject(faults)
        let bad = try #require(try q.write([ok, ok]))
        guard case .failed = try q.wait(for: bad) else {
            Issue.record("the refused write completed")
            return
        }
        #expect(q.isStopped)
        #expect(throws: RDMAError.self) { try q.write([ok]) }
        q.close()
        #expect(q.credits.outstanding == 0)
    }

    /// The third write of a chain of four is refused: the two before it ran, the fourth is
    /// flushed, and the count comes back to zero from the completions alone.
    @Test func aWriteRefusedMidChainLeavesNothingCounted() throws {
        let f = try OneQueue(depth: 8)
        defer { f.buffer.deallocate() }
        let (a, q, ok) = (f.queue.driver, f.queue, f.ok)
        var bad = ok
        bad.rkey ^= 0x77
        let id = try #require(try q.write([ok, ok, bad, ok]))
        guard case .failed = try q.wait(for: id) else {
            Issue.record("the refused write completed")
            return
        }
        var polls = 0
        while q.credits.outstanding > 0 && polls < 100 {
            _ = try q.poll()
            polls += 1
        }
        #expect(q.credits.outstanding == 0, "\(q.credits.outstanding) left after \(polls) polls")
        #expect((a as! SimulatedQueuePair).outstandingForTests == 0)
    }

    /// A queue pair made not to accept writes (a worker's, which only writes) refuses a peer's
    /// write whatever rkey it names, as a NIC checks the queue pair's access before the region's.
    @Test func aQueuePairThatOnlyWritesRefusesWritesIntoItsSide() throws {
        let device = SimulatedRDMADevice()
        let size = 1 << 16
        let (source, target) = RDMASelfTest.buffers(size, seed: 9)
        defer {
            source.deallocate()
            target.deallocate()
        }
        let src = try device.register(source, length: size)
        let dst = try device.register(target, length: size)
        /// A worker-style queue pair (writes only) connected to a client-style one.
        func workerAndClient() throws -> (any RDMAQueuePairDriver, any RDMAQueuePairDriver) {
            let worker = try device.makeQueuePair(depth: 4, acceptsWrites: false)
            let client = try device.makeQueuePair(depth: 4, acceptsWrites: true)
            try worker.connect(to: client.address)
            try client.connect(to: worker.address)
            return (worker, client)
        }
        let (worker, client) = try workerAndClient()
        // The client writes into memory behind the worker's queue pair: refused.
        let intoWorker = RDMAQueue(driver: client, depth: 4)
        let id = try #require(try intoWorker.write([RDMAWrite(local: target, length: 4096, lkey: dst.lkey, remoteAddress: src.address, rkey: src.rkey)]))
        #expect(try intoWorker.wait(for: id) != .success)
        #expect(Array(UnsafeRawBufferPointer(start: source, count: 16)) == Array(SampleData.bytes(seed: 9, count: 16)))
        // On a new pair (the refused write stopped the first), the worker writes into the client's: taken.
        let (worker2, client2) = try workerAndClient()
        let intoClient = RDMAQueue(driver: worker2, depth: 4)
        let id2 = try #require(try intoClient.write([RDMAWrite(local: source, length: 4096, lkey: src.lkey, remoteAddress: dst.address, rkey: dst.rkey)]))
        #expect(try intoClient.wait(for: id2) == .success)
        #expect(memcmp(source, target, 4096) == 0)
        withExtendedLifetime((worker, client2)) {}
    }
}

/// A simulated device with 64 KiB registered, and a queue of `depth` connected to a peer on it;
/// `ok` writes 512 bytes within the region (the caller deallocates `buffer`).
private struct OneQueue {
    let device = SimulatedRDMADevice()
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 64)
    let queue: RDMAQueue
    let peer: any RDMAQueuePairDriver
    let ok: RDMAWrite

    init(depth: Int) throws {
        let mr = try device.register(buffer, length: 1 << 16)
        let a = try device.makeQueuePair(depth: depth)
        peer = try device.makeQueuePair(depth: depth)
        try a.connect(to: peer.address)
        queue = RDMAQueue(driver: a, depth: depth)
        ok = RDMAWrite(local: buffer, length: 512, lkey: mr.lkey, remoteAddress: mr.address + 4096, rkey: mr.rkey)
    }
}
