#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ShoalClient
@testable import ShoalCore
@testable import ShoalSys
@testable import ShoalTransport
@testable import ShoalWorker
import ShoalTestSupport

/// The RDMA READ path, end to end through a real worker and SeaweedFS, on the SIMULATED device
/// (an in-process simulation: RDMA WRITE done as a memory copy; not RDMA). What it verifies is
/// the transport's logic: queue pairs connected over the authenticated connection, data written
/// into the caller's own buffer and checked against the answer's CRC32C, buffers registered once,
/// and the fallback to TCP on every injected failure. Real verbs run in `Tools/rdma-vm.sh`.
@Suite(.serialized) struct RDMATransportTests {
    static func harness(_ name: String, workerRDMA: Bool = true, clientRDMA: Bool = true) throws -> Harness {
        let h = try Harness(name) { if workerRDMA { $0.rdma = WorkerConfig.RDMASettings(simulated: true) } }
        var config = ClientConfig(workers: [h.endpoint], secret: Array(h.secret.utf8))
        if clientRDMA { config.rdma = ClientRDMASettings(simulated: true) }
        config.rdmaRetrySeconds = 0
        h.client = try ShoalClient(config: config)
        return h
    }

    /// Reads all of `key` into one reused buffer (so its registration is reused too).
    static func read(_ h: Harness, _ key: String, into buffer: UnsafeMutableRawBufferPointer) throws -> [UInt8] {
        let f = try h.client.open(h.ref(key))
        let n = try h.client.read(f, at: 0, into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(f.size)]))
        return Array(buffer[..<n])
    }

    @Test func readsArriveByRDMAInTheCallersBufferByteExact() throws {
        let h = try Self.harness("rdma-read")
        let data = SampleData.bytes(seed: 71, count: (3 << 20) + 12345)
        try h.put("o", data)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        // Cold (filled from the store), then warm (from the cache), into the same buffer.
        for _ in 0..<3 {
            memset(buffer.baseAddress!, 0, buffer.count)
            #expect(try Self.read(h, "o", into: buffer) == data)
        }
        let writes = h.metric("shoal_rdma_writes_total")
        #expect(writes >= 12, "4 blocks read 3 times, each one write: \(writes)")
        #expect(h.metric("shoal_rdma_bytes_total") == Double(3 * data.count))
        #expect(h.metric("shoal_rdma_fallbacks_total") == 0)
        let status = try #require(h.client.rdmaStatus)
        #expect(status.simulated && status.device == "simulated-client")
        #expect(status.counters.rdmaReads >= 12 && status.counters.fallbacks == 0, "\(status.counters)")
        // One buffer, read 3 times in 4 block-sized pieces: registered once, whole (the device
        // opened with the open's connection), before the first read's pieces went; every piece
        // of every read (12) and the later reads' own look-ups (2) found it.
        #expect(status.counters.registrations == 1 && status.counters.reused == 14, "\(status.counters)")
        // A range inside a block, at an odd offset: written where it belongs, nothing around it.
        let f = try h.client.open(h.ref("o"))
        memset(buffer.baseAddress!, 0xEE, buffer.count)
        let inner = UnsafeMutableRawBufferPointer(rebasing: buffer[100..<(100 + 70_000)])
        #expect(try h.client.read(f, at: (1 << 20) + 3, into: inner) == 70_000)
        #expect(Array(inner) == Array(data[((1 << 20) + 3)..<((1 << 20) + 3 + 70_000)]))
        #expect(buffer[99] == 0xEE && buffer[100 + 70_000] == 0xEE)
    }

    /// The device's writes are bounded over all its queue pairs: with room for one, a write that
    /// finds it taken waits for it (its buffer held), and every READ still comes by RDMA.
    @Test func theDevicesTransfersAreBounded() throws {
        let h = try Harness("rdma-bounded") { $0.rdma = WorkerConfig.RDMASettings(maxTransfers: 1, simulated: true) }
        var config = ClientConfig(workers: [h.endpoint], secret: Array(h.secret.utf8))
        config.rdma = ClientRDMASettings(simulated: true)
        config.pipelineDepth = 8
        h.client = try ShoalClient(config: config)
        let data = SampleData.bytes(seed: 79, count: 16 << 20)
        try h.put("o", data)
        for _ in 0..<3 { #expect(try h.readAll("o") == data) }
        let t = try #require(h.worker.rdmaTransfers)
        #expect(t.max == 1 && t.highWater == 1 && t.outstanding == 0, "\(t)")
        #expect(h.metric("shoal_rdma_writes_total") == 48)
        #expect(h.metric("shoal_rdma_busy_total") >= 1, "no write ever waited for room: \(h.metric("shoal_rdma_busy_total"))")
        #expect(h.metric("shoal_rdma_fallbacks_total") == 0)
        #expect(try #require(h.client.rdmaStatus).counters.rdmaReads == 48)
    }

    @Test func aWriteThatFailsIsAnsweredOverTCPAndTheReadSucceeds() throws {
        let h = try Self.harness("rdma-write-fails")
        let data = SampleData.bytes(seed: 72, count: 2 << 20)
        try h.put("o", data)
        let device = try #require(h.worker.rdmaDevice as? SimulatedRDMADevice)
        #expect(device.isSimulated)
        var faults = SimulatedRDMADevice.Faults()
        faults.failWrites = true
        device.inject(faults)
        #expect(try h.readAll("o") == data)
        #expect(h.metric("shoal_rdma_fallbacks_total") >= 1)
        let counters = try #require(h.client.rdmaStatus).counters
        #expect(counters.fallbacks >= 1 && counters.rdmaReads == 0, "\(counters)")
        // With the fault gone, a new connection uses RDMA again (rdmaRetrySeconds is 0 here).
        device.inject(SimulatedRDMADevice.Faults())
        let before = h.metric("shoal_rdma_writes_total")
        for _ in 0..<2 { #expect(try h.readAll("o") == data) }
        #expect(h.metric("shoal_rdma_writes_total") > before)
    }

    @Test func aPostTheDeviceTakesOnlyPartOfFallsBackToo() throws {
        let h = try Self.harness("rdma-post-fails")
        let data = SampleData.bytes(seed: 73, count: 1 << 20)
        try h.put("o", data)
        #expect(try h.readAll("o") == data)  // connected, and cached
        let device = try #require(h.worker.rdmaDevice as? SimulatedRDMADevice)
        var faults = SimulatedRDMADevice.Faults()
        faults.failNextPostAfter = 0
        device.inject(faults)
        let fallbacks = h.metric("shoal_rdma_fallbacks_total")
        #expect(try h.readAll("o") == data)
        #expect(h.metric("shoal_rdma_fallbacks_total") == fallbacks + 1)
    }

    /// Data that lands wrong (the simulation flips a byte after the copy; on hardware, pages that
    /// were mapped anew after they were registered) fails the answer's CRC32C: the registration is
    /// dropped and the READ goes again over TCP. No bad byte reaches the caller.
    @Test func dataThatDoesNotMatchItsCRCIsReadAgainOverTCP() throws {
        let h = try Self.harness("rdma-corrupt")
        let data = SampleData.bytes(seed: 74, count: 2 << 20)
        try h.put("o", data)
        #expect(try h.readAll("o") == data)
        let device = try #require(h.worker.rdmaDevice as? SimulatedRDMADevice)
        var faults = SimulatedRDMADevice.Faults()
        faults.corruptWrites = true
        device.inject(faults)
        let before = try #require(h.client.rdmaStatus).counters
        #expect(try h.readAll("o") == data)
        let after = try #require(h.client.rdmaStatus).counters
        #expect(after.fallbacks >= before.fallbacks + 2 && after.rdmaReads == before.rdmaReads, "\(before) → \(after)")
    }

    @Test func aWorkerWithoutRDMAServesAnRDMAClientOverTCP() throws {
        let h = try Self.harness("rdma-worker-tcp-only", workerRDMA: false)
        let data = SampleData.bytes(seed: 75, count: (1 << 20) + 1)
        try h.put("o", data)
        #expect(try h.readAll("o") == data)
        let counters = try #require(h.client.rdmaStatus).counters
        #expect(counters.connectFailures >= 1 && counters.rdmaReads == 0, "\(counters)")
        #expect(h.metric("shoal_rdma_writes_total") == 0)
    }

    /// Workers advertise their transports in the view: a client does not ask one whose view
    /// entry says TCP only, and uses RDMA with one that says it serves RDMA.
    @Test func theViewSaysWhichWorkersServeRDMA() throws {
        for advertised in [false, true] {
            let h = try Self.harness("rdma-advertised-\(advertised)")
            let data = SampleData.bytes(seed: 77, count: 1 << 20)
            try h.put("o", data)
            let path = makeTemporaryDirectory("members") + "/members.json"
            try MembersFile.write(try MembershipView(epoch: 1, members: [Member(id: "w", address: h.endpoint.description, rdma: advertised)]), to: path)
            var config = ClientConfig(workers: [], secret: Array(h.secret.utf8))
            config.membersFile = path
            config.rdma = ClientRDMASettings(simulated: true)
            h.client = try ShoalClient(config: config)
            #expect(h.client.view.members.first?.rdma == advertised)
            #expect(try h.readAll("o") == data)
            if advertised {
                #expect(h.metric("shoal_rdma_writes_total") >= 1 && (h.client.rdmaStatus?.counters.rdmaReads ?? 0) >= 1)
            } else {
                #expect(h.metric("shoal_rdma_writes_total") == 0 && h.metric("shoal_rdma_connections_total") == 0)
                #expect(h.client.rdmaStatus == nil, "the device is not even opened")
            }
        }
    }

    /// Worker to worker: a worker that joins takes the blocks it now owns from their previous
    /// owners, and those write them by RDMA straight into its registered buffers (the client
    /// here reads over TCP, so every RDMA write counted is a hand-over).
    @Test func blocksHandedOverBetweenWorkersComeByRDMA() throws {
        let prefix = try EtcdFixture.get().makePrefix("rdma-handover")
        let simulated = WorkerConfig.RDMASettings(simulated: true)
        // 36 blocks: the new worker owns none of them with a chance of (2/3)^36, under one in a million.
        let data = SampleData.bytes(seed: 78, count: 36 << 20)
        var (bucket, workers) = try EtcdTests.cluster("rdma-hand", 2, prefix: prefix, data: data, rdma: simulated)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        #expect(client.view.members.allSatisfy { $0.rdma == true }, "registered with rdma: \(client.view.members)")
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(workers.map { $0.metrics.value("shoal_rdma_writes_total") } == [0, 0])

        workers.append(try EtcdTests.worker("rdma-hand", 2, prefix: prefix, rdma: simulated))
        #expect(EtcdTests.eventually(3) { client.view.members.count == 3 })
        let moved = (0..<36).filter { client.owners(of: file.block(UInt64($0))).first == Endpoint(host: "127.0.0.1", port: workers[2].port) }.count
        #expect(moved > 0, "the new worker owns none of 36 blocks")
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(EtcdTests.storeGETs(workers) == 36, "blocks that moved were fetched from the store again")
        #expect(workers[2].metrics.value("shoal_handover_hits_total") == Double(moved))
        let written = workers[0].metrics.value("shoal_rdma_writes_total") + workers[1].metrics.value("shoal_rdma_writes_total")
        #expect(written == Double(moved), "\(moved) blocks handed over, \(written) RDMA writes")
        #expect(workers.map { $0.metrics.value("shoal_rdma_fallbacks_total") } == [0, 0, 0])
    }

    /// A worker told to serve RDMA through a device this host has not refuses to start, naming the key.
    @Test func aWorkerWhoseRDMADeviceIsMissingRefusesToStart() throws {
        let fx = try ObjectStoreFixture.get()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("rdma-missing"), store: fx.storeConfig())
        config.rdma = WorkerConfig.RDMASettings(device: "no-such-device0")
        let worker = try Worker(config: config, logger: testLogger)
        #expect { try worker.start() } throws: { e in
            let m = (e as? ShoalError)?.message ?? ""
            return m.contains("key 'rdma'") && (m.contains("no RDMA device") || m.contains("libibverbs"))
        }
        worker.stopDataPlane()
    }

    /// A READ whose descriptor names fewer bytes than it asks for is refused, and the connection
    /// goes on; RDMA_CONNECT on a worker without RDMA says why.
    @Test func badRDMARequestsGetClearErrors() throws {
        let h = try Self.harness("rdma-bad-requests", clientRDMA: false)
        let data = SampleData.bytes(seed: 76, count: 64 << 10)
        try h.put("o", data)
        let f = try h.client.open(h.ref("o"))
        let c = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
        defer { c.close() }
        let key = BlockKey(object: h.ref("o"), version: f.version, blockSize: f.blockSize, index: 0)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { buffer.deallocate() }
        let short = ReadRequest(block: key, offset: 0, length: 4096, rdma: RDMADescriptor(address: UInt64(UInt(bitPattern: buffer)), rkey: 1, length: 100))
        let id = try c.sendRead(short, into: buffer, length: 4096)
        let (got, result) = try c.receiveNext()
        #expect(got == id)
        guard case .failure(let e) = result else { Issue.record("a short descriptor was served"); return }
        #expect(e.code == .badRequest && e.message.contains("descriptor"), "\(e)")
        // Still usable: a READ without RDMA.
        let plain = ReadRequest(block: key, offset: 0, length: 4096)
        let id2 = try c.sendRead(plain, into: buffer, length: 4096)
        try c.receiveRead(id: id2)
        #expect(Array(UnsafeRawBufferPointer(start: buffer, count: 4096)) == Array(data[..<4096]))

        let tcpOnly = try Self.harness("rdma-connect-refused", workerRDMA: false, clientRDMA: false)
        let c2 = try WorkerConnection(endpoint: tcpOnly.endpoint, secret: Array(tcpOnly.secret.utf8))
        defer { c2.close() }
        #expect(throws: ShoalError.self) { try c2.attachRDMA(ClientRDMA(device: SimulatedRDMADevice(name: "simulated-client"))) }
        #expect(!c2.isBroken && !c2.usesRDMA)
    }
}
