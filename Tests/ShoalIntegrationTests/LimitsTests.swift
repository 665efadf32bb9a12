#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalClient
import ShoalCore
import ShoalIO
import ShoalObjectStore
import ShoalSys
import ShoalTestSupport
import ShoalTransport
@testable import ShoalWorker

/// A worker over a file store (no object store needed).
func fileStoreWorkerConfig(_ name: String) -> WorkerConfig {
    let root = makeTemporaryDirectory(name + "-store")
    var store = StoreConfig(name: "default", kind: .file)
    store.root = root
    return testWorkerConfig(cacheDirectory: makeTemporaryDirectory(name), store: store, capacity: 32 << 20)
}

@Suite(.serialized) struct LimitsTests {
    @Test func aClientOverMaxConnectionsIsToldTheWorkerIsFull() throws {
        var config = fileStoreWorkerConfig("full")
        config.maxConnections = 2
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let endpoint = Endpoint(host: "127.0.0.1", port: worker.port)
        let first = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        let second = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        defer { first.close(); second.close() }
        do {
            _ = try WorkerConnection(endpoint: endpoint, secret: config.secret)
            Issue.record("a third connection was served with maxConnections 2")
        } catch {
            #expect(error.message.contains("worker is full: 2 connections (maxConnections)"), "\(error.message)")
            #expect(error.message.contains("\(endpoint)"))
        }
        #expect(worker.metrics.value("shoal_connections_refused_total") == 1)
    }

    /// A client that asked for blocks and stopped reading its replies (a stopped process, or one
    /// that means harm) once held every other reader of the block whose reply the worker was
    /// sending it: they waited for that fill to end, which came only after the send (up to 60 s),
    /// and their clients gave up first. Waiting readers now copy the filler's bytes at once.
    @Test func aReaderThatStopsReadingDoesNotHoldOthersOfTheSameBlock() throws {
        let h = try Harness("stalled-reader")
        let blocks = 32
        let data = SampleData.bytes(seed: 26, count: blocks << 20)
        try h.put("o", data)
        let file = try h.client.open(h.ref("o"))
        let stalled = try WorkerConnection(endpoint: h.endpoint, secret: Array(h.secret.utf8))
        defer { stalled.close() }
        let sink = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { sink.deallocate() }
        for i in 0..<blocks { _ = try stalled.sendRead(ReadRequest(block: file.block(UInt64(i)), offset: 0, length: 1 << 20), into: sink, length: 1 << 20) }
        // Wait (bounded) until the socket buffers are full and the worker is stuck sending one
        // reply while its fill is open: fills stop and one stays in flight.
        var last = -1.0
        for _ in 0..<60 {
            usleep(500_000)
            let fills = h.metric("shoal_fills_total")
            if fills == last && h.worker.service.fills.inFlight >= 1 { break }
            last = fills
        }
        // Its replies wait behind the stuck one, each holding its fill (at most its share of buffers).
        let held = h.worker.service.fills.inFlight
        #expect(held >= 1 && held <= h.worker.config.buffersPerConnection, "the stalled connection's sends should hold its fills (\(held))")
        #expect(try h.client.read(file, offset: 0, length: data.count) == data)
    }

    /// The handshake's 10 s were counted per frame: a client that sent HELLO's header, its
    /// payload 6 s later and AUTH 6 s after that was authenticated after 12 s, and one that
    /// dripped every piece kept an unauthenticated connection for a minute. The deadline holds
    /// for the whole handshake now.
    @Test func theHandshakeHasOneDeadline() throws {
        let config = fileStoreWorkerConfig("slow-handshake")
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let socket = try TCPSocket.connect(Endpoint(host: "127.0.0.1", port: worker.port), timeoutMillis: 2000)
        defer { socket.close() }
        let nonce = [UInt8](repeating: 7, count: MutualAuth.nonceSize)
        let hello = HelloMessage(nonce: nonce, clientName: "slow").encoded
        let deadline = monotonicNanos() + 30_000_000_000
        try socket.send(FrameHeader(type: .hello, requestID: 0, payloadLength: UInt32(hello.count)).bytes)
        usleep(6_000_000)
        try socket.send(hello)
        let head = try socket.receive(count: FrameHeader.size, deadline: deadline)
        let header = try head.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!, maxPayload: 4096).get() }
        let challenge = try #require(ChallengeMessage(decoding: try socket.receive(count: Int(header.payloadLength), deadline: deadline)))
        usleep(6_000_000)
        let proof = MutualAuth.clientProof(secret: config.secret, hello: hello, challenge: challenge.signedPart)
        _ = try? socket.send(FrameHeader(type: .auth, requestID: 0, payloadLength: UInt32(proof.count)).bytes + proof)
        // The worker closed the connection at 10 s: no AUTH_OK (or nothing at all) comes back.
        let reply = try? socket.receive(count: FrameHeader.size, deadline: deadline)
        #expect(reply.map { $0[5] } != FrameType.authOK.rawValue, "a handshake of 12 s was accepted")
    }

    /// Connections that never send a byte (no secret needed) once took every place for 10 s
    /// each, again and again: every client was told the worker was full. A connection still in
    /// its handshake now gives its place up to a new one; authenticated ones keep theirs.
    @Test func connectionsThatNeverAuthenticateCannotKeepClientsOut() throws {
        var config = fileStoreWorkerConfig("squat")
        config.maxConnections = 4
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let endpoint = Endpoint(host: "127.0.0.1", port: worker.port)
        let silent = try (0..<4).map { _ in try TCPSocket.connect(endpoint, timeoutMillis: 2000) }
        defer { silent.forEach { $0.close() } }
        // The worker has taken all four in (on a busy machine its shards may not have yet, and a
        // client accepted before a silent one would be the oldest in its handshake).
        let deadline = monotonicNanos() + 5_000_000_000
        while !worker.statusJSON().contains("\"connections\":4,") && monotonicNanos() < deadline { usleep(10_000) }
        // Both clients are served, each in the place of a silent connection.
        let first = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        let second = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        defer { first.close(); second.close() }
        #expect { _ = try first.stat(ObjectRef(store: "default", bucket: "b", key: "none")) } throws: {
            ($0 as? ShoalError)?.code == .notFound
        }
        #expect(worker.metrics.value("shoal_connections_displaced_total") == 2)
        #expect(worker.metrics.value("shoal_connections_refused_total") == 0)
        // Two silent connections were closed to make room (the oldest the worker accepted: with a
        // shard per core, not always in the order they connected); the other two still wait.
        let closed = silent.filter { s in
            do {
                _ = try s.receive(count: 1, deadline: monotonicNanos() + 1_000_000_000)
                return false
            } catch let error as SysError {
                return error.errno != ETIMEDOUT
            } catch {
                return true
            }
        }
        #expect(closed.count == 2, "\(closed.count) silent connections were closed")
        // Two authenticated and two silent: a third client takes a silent one's place, a fourth
        // too, and a fifth finds every place authenticated.
        let third = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        let fourth = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        defer { third.close(); fourth.close() }
        #expect { _ = try WorkerConnection(endpoint: endpoint, secret: config.secret) } throws: {
            ($0 as? ShoalError)?.message.contains("worker is full: 4 connections (maxConnections)") ?? false
        }
    }
}

/// `shoal cat` as a user runs it (the built binary), against an in-process worker.
@Suite(.serialized) struct CatCommandTests {
    @Test func rangesWorkAsTheHelpSays() throws {
        let shoal = repositoryRoot + "/.build/debug/shoal"
        guard FileSystem.exists(shoal) else {
            Issue.record("build the command line first: swift build --product shoal")
            return
        }
        let config = fileStoreWorkerConfig("cat")
        let text = Array(String(repeating: "0123456789", count: 200).utf8)  // 2000 bytes
        let store = FileStore(name: "default", root: config.stores[0].root)
        try store.createBucket("b")
        try store.put(bucket: "b", key: "k", bytes: text)
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let secretFile = makeTemporaryDirectory("cat-secret") + "/secret"
        try FileSystem.writeFile(secretFile, config.secret)
        func cat(_ range: String...) -> (Int32, String) {
            runProcess(shoal, ["cat", "s3://b/k", "--worker", "127.0.0.1:\(worker.port)", "--secret-file", secretFile] + range)
        }
        let suffix = cat("--range", "-100")
        #expect(suffix.0 == 0 && suffix.1 == String(decoding: text.suffix(100), as: UTF8.self), "\(suffix)")
        #expect(cat("--range=-100").1 == suffix.1)
        #expect(cat("--range", "0+1KiB").1.utf8.count == 1024)
        #expect(cat("--range", "0-1KiB").1.utf8.count == 1025, "START-END is inclusive, as HTTP")
        let past = cat("--range", "5000-")
        #expect(past.0 != 0 && past.1.contains("2000 bytes"), "\(past)")
        #expect(!suffix.1.contains("warning"))

        // A secret file every user can read still works, with a warning that says so.
        try FileSystem.setPermissions(secretFile, 0o644)
        let open = cat("--range", "0+10")
        #expect(open.0 == 0 && open.1.contains("can be read by every user of this host") && open.1.hasSuffix("0123456789"), "\(open)")
    }
}

/// `shoal selftest rdma` as a user runs it: on this host, which has no RDMA device, it says so
/// and exits 3 (nothing verified); `--simulated` runs the checks on the in-process simulated
/// device and says that it is one.
@Suite struct SelftestCommandTests {
    @Test func noDeviceIsExitThreeAndTheSimulationSaysItIsOne() throws {
        let shoal = repositoryRoot + "/.build/debug/shoal"
        guard FileSystem.exists(shoal) else {
            Issue.record("build the command line first: swift build --product shoal")
            return
        }
        let real = runProcess(shoal, ["selftest", "rdma"])
        if Verbs.devices().isEmpty {
            #expect(real.0 == 3 && real.1.contains("no RDMA device found") && real.1.contains("nothing was verified"), "\(real)")
        } else {
            #expect(real.0 == 0 && !real.1.contains("SIMULATED"), "\(real)")
        }
        let sim = runProcess(shoal, ["selftest", "rdma", "--simulated"])
        #expect(sim.0 == 0 && sim.1.contains("SIMULATED: an in-process simulation, not RDMA") && !sim.1.contains("FAIL"), "\(sim)")
        let json = runProcess(shoal, ["selftest", "rdma", "--simulated", "--json"])
        #expect(json.0 == 0 && json.1.contains("\"simulated\":true") && json.1.contains("\"device\":\"simulated0\""), "\(json)")
    }
}

@Suite(.serialized) struct HungStoreTests {
    /// A store that accepts TCP and never answers: the worker gives up first and says so,
    /// naming the store, so the user is not told the healthy worker is at fault.
    @Test func aHungStoreIsNamedBeforeTheClientGivesUpOnTheWorker() throws {
        let (listener, port) = try TCPSocket.listen(Endpoint(host: "127.0.0.1", port: 0), backlog: 64)
        defer { listener.close() }
        var store = StoreConfig(name: "hung", kind: .s3)
        store.endpoint = "http://127.0.0.1:\(port)"
        store.accessKey = "a"
        store.secretKey = "b"
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("hung"), store: store)
        config.stores[0].name = "default"
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let endpoint = Endpoint(host: "127.0.0.1", port: worker.port)
        let client = try ShoalClient(config: ClientConfig(workers: [endpoint], secret: config.secret))
        do {
            _ = try client.open(ObjectRef(store: "default", bucket: "b", key: "k"))
            Issue.record("a STAT through a hung store succeeded")
        } catch {
            #expect(error.message.contains("store 'default'") && error.message.contains("timed out"), "\(error.message)")
            #expect(!error.message.contains("did not answer in time"), "\(error.message)")
        }
        // An uncached READ (a GET to the store) the same.
        let c = try WorkerConnection(endpoint: endpoint, secret: config.secret)
        defer { c.close() }
        let key = BlockKey(object: ObjectRef(store: "default", bucket: "b", key: "k"), etag: "e", objectSize: 4096, blockSize: 1 << 20, index: 0)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        let id = try c.sendRead(ReadRequest(block: key, offset: 0, length: 4096), into: buffer, length: 4096)
        do {
            try c.receiveRead(id: id)
            Issue.record("a READ through a hung store succeeded")
        } catch {
            let message = error.message
            #expect(message.contains("store 'default'") && message.contains("timed out") && !message.contains("did not answer in time"), "\(message)")
        }
    }
}
