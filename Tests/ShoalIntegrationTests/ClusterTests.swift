#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ShoalClient
@testable import ShoalCore
@testable import ShoalSys
@testable import ShoalWorker
import ShoalTestSupport

/// Several workers serving one client: placement and routing.
@Suite(.serialized) struct ClusterTests {
    /// `n` in-process workers on the fixture's store, and a bucket holding `data` as "o".
    static func workersAndObject(_ name: String, _ n: Int, data: [UInt8]) throws -> (ObjectStoreFixture, String, [Worker]) {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket(name)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let workers = try (0..<n).map { i -> Worker in
            let w = try Worker(config: testWorkerConfig(cacheDirectory: makeTemporaryDirectory("\(name)-\(i)"), store: fx.storeConfig()),
                               logger: testLogger)
            try w.start()
            return w
        }
        return (fx, bucket, workers)
    }

    /// A worker whose store is `server`.
    static func worker(_ name: String, server: CannedHTTPServer) throws -> Worker {
        var store = StoreConfig(name: "default", kind: .s3)
        store.endpoint = server.url
        store.accessKey = "canned"
        store.secretKey = "canned-secret"
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory(name), store: store)
        config.fillParts = 1
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        return worker
    }

    /// A read whose blocks are owned by two workers runs on both at once: while the first
    /// worker's store holds every GET back, the second worker serves all of its blocks.
    @Test func aReadSpanningTwoWorkersRunsOnBothAtOnce() throws {
        let data = SampleData.bytes(seed: 48, count: 16 << 20)
        let servers = try (0..<2).map { _ in try CannedHTTPServer() }
        for s in servers { s.serveObject(data, etag: "\"v1\"") }
        let workers = try (0..<2).map { try ClusterTests.worker("span-\($0)", server: servers[$0]) }
        defer { workers.forEach { $0.stopDataPlane() } }
        let endpoints = workers.map { Endpoint(host: "127.0.0.1", port: $0.port) }
        let client = try ShoalClient(config: ClientConfig(workers: endpoints, secret: Array("test-secret-0123456789".utf8)))
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "o"))
        // Which worker owns which block; the one a one-worker-at-a-time read would go to first is held.
        var bytes = [0, 0]
        for i in 0..<16 {
            let owner = try #require(client.owners(of: file.block(UInt64(i))).first)
            bytes[endpoints.firstIndex(of: owner)!] += 1 << 20
        }
        #expect(bytes[0] > 0 && bytes[1] > 0, "16 blocks all on one worker")
        let first = endpoints.firstIndex(of: endpoints.min { $0.description < $1.description }!)!
        let other = 1 - first
        servers[first].hold(after: 1000)
        let outcome = ReadOutcome()
        try OSThread.spawn(name: "reader") { outcome.set(Result { try client.read(file, offset: 0, length: data.count) }) }
        let deadline = monotonicNanos() + 10_000_000_000
        while workers[other].metrics.value("shoal_bytes_served_total") < Double(bytes[other]) && monotonicNanos() < deadline { usleep(10_000) }
        #expect(workers[other].metrics.value("shoal_bytes_served_total") == Double(bytes[other]),
                "the second worker served its blocks while the first one's store held them")
        #expect(outcome.value == nil)
        servers[first].release()
        #expect(try outcome.wait().get() == data)
    }

    /// A worker that dies (its port refuses) or is cut off (nothing comes back, nothing says so)
    /// costs a read at most one timeout: it is marked down, its blocks, sent or not, go to their
    /// fallback, and the read is whole. While it is down, reads do not try it at all.
    @Test(arguments: ["dead", "cut off"]) func aReadRoutesAroundAnUnreachableWorker(how: String) throws {
        let data = SampleData.bytes(seed: 49, count: 16 << 20)
        let (fx, bucket, workers) = try ClusterTests.workersAndObject("failover", 2, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let relay = try TCPRelay(to: Endpoint(host: "127.0.0.1", port: workers[1].port))
        var config = ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: workers[0].port), relay.endpoint],
                                  secret: Array("test-secret-0123456789".utf8))
        config.timeoutMillis = 1000
        config.connectTimeoutMillis = 500
        config.markDownSeconds = 60
        let client = try ShoalClient(config: config)
        let ref = ObjectRef(store: "default", bucket: bucket, key: "o")
        let file = try client.open(ref)
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        let viaRelay = (0..<16).filter { client.owners(of: file.block(UInt64($0))).first == relay.endpoint }.count
        #expect(viaRelay > 0 && viaRelay < 16, "the relayed worker owns \(viaRelay) of 16 blocks")
        #expect(workers[1].metrics.value("shoal_bytes_served_total") == Double(viaRelay << 20))

        if how == "dead" { relay.cut() } else { relay.freeze() }
        // Warm on the other worker or not, every byte comes back.
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.downWorkers == [relay.endpoint])
        #expect(try client.open(ref) == file)
        // A new client, which knows nothing of the outage, asks the dead worker for an object's
        // version (it is that object's metadata owner) and gets it from the fallback.
        let view = try MembershipView(epoch: 0, members: config.workers.map { Member(id: $0.description, address: $0.description) })
        let placement = Placement(view: view)
        let relayIndex = try #require(view.index(of: relay.endpoint.description))
        let owned = try #require((0..<64).map { ObjectRef(store: "default", bucket: bucket, key: "m\($0)") }.first {
            placement.owners(of: $0.placementID).owner == relayIndex
        })
        try fx.store().put(bucket: bucket, key: owned.key, bytes: Array(data[0..<1000]))
        let fresh = try ShoalClient(config: config)
        #expect(try fresh.read(try fresh.open(owned), offset: 0, length: 1000) == Array(data[0..<1000]), "a STAT goes to the fallback too")
        #expect(fresh.downWorkers == [relay.endpoint])
        let accepted = relay.accepted
        #expect(try client.read(file, offset: 12345, length: 8 << 20) == Array(data[12345..<(12345 + (8 << 20))]))
        // At most the background probe reached it (a frozen relay accepts it, then says nothing).
        #expect(relay.accepted <= accepted + 1, "a worker marked down is not tried again")
        #expect(workers[1].metrics.value("shoal_bytes_served_total") == Double(viaRelay << 20), "nothing more reached it")
        // Its probes go unanswered: it stays marked down, and reads never wait on it.
        usleep(600_000)  // past connectTimeoutMillis: the pending probe counts as failed
        #expect(try client.read(file, offset: 0, length: 1 << 20) == Array(data[0..<(1 << 20)]))
        #expect(client.downWorkers == [relay.endpoint])
        #expect(workers[1].metrics.value("shoal_bytes_served_total") == Double(viaRelay << 20))
    }

    /// A worker marked down is probed in the background of the client's next calls (a connect
    /// and a HELLO, never waited on): once it answers, it is taken back long before its mark
    /// would run out, and serves its blocks again.
    /// A worker that is stopping turns its queued warm fills away (`shutting_down`): the client
    /// takes it out of its routing at once and the warm of every block ends cached on the
    /// fallback, with no wait for the view to change.
    /// Both with the client's own lanes and with warm lanes, fewer of them than workers (1) and
    /// more (3): the budget moves to the worker with blocks left.
    @Test(arguments: [nil, 1, 3]) func aStoppingWorkersWarmFillsGoToTheFallback(lanes: Int?) throws {
        let data = SampleData.bytes(seed: 50, count: 16 << 20)
        let (_, bucket, workers) = try ClusterTests.workersAndObject("stopping", 2, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        var config = ClientConfig(workers: workers.map { Endpoint(host: "127.0.0.1", port: $0.port) }, secret: Array("test-secret-0123456789".utf8))
        config.markDownSeconds = 60
        let client = try ShoalClient(config: config)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        let blocks = (0..<16).map { ShoalClient.BlockOfFile(file: file, index: UInt64($0)) }
        let stopping = Endpoint(host: "127.0.0.1", port: workers[0].port)
        let owned = blocks.filter { client.owners(of: $0.file.block($0.index)).first == stopping }.count
        #expect(owned > 0 && owned < 16, "worker 0 owns \(owned) of 16 blocks")
        workers[0].closeWarmUpQueue()
        let results = try client.warm(blocks, inFlight: lanes)
        #expect(results.allSatisfy { (try? $0.get()) == .store }, "\(results)")
        #expect(client.downWorkers == [stopping])
        #expect(workers[0].cache.blockCount == 0 && workers[1].cache.blockCount == 16)
    }

    @Test func aWorkerThatComesBackIsFoundByProbes() throws {
        let data = SampleData.bytes(seed: 57, count: 8 << 20)
        let (_, bucket, workers) = try ClusterTests.workersAndObject("probe", 2, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let relay = try TCPRelay(to: Endpoint(host: "127.0.0.1", port: workers[1].port))
        var config = ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: workers[0].port), relay.endpoint],
                                  secret: Array("test-secret-0123456789".utf8))
        config.connectTimeoutMillis = 500
        config.markDownSeconds = 600
        let client = try ShoalClient(config: config)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        relay.cut()
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.downWorkers == [relay.endpoint])
        // Refused probes keep it down.
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.downWorkers == [relay.endpoint])
        try relay.restore()
        let served = workers[1].metrics.value("shoal_bytes_served_total")
        let deadline = monotonicNanos() + 5_000_000_000
        while !client.downWorkers.isEmpty && monotonicNanos() < deadline {
            _ = try client.read(file, offset: 0, length: 4096)
            usleep(20_000)
        }
        #expect(client.downWorkers.isEmpty, "the worker answers again but is still marked down")
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(workers[1].metrics.value("shoal_bytes_served_total") > served, "the worker that came back serves its blocks again")
    }

    /// With hedging on, READs that their owner leaves unanswered (its store holds every GET) go
    /// to the blocks' fallback too, and the read completes from there while the owner still
    /// holds them; nobody is marked down, and the late replies never touch the caller's buffer.
    @Test func hedgedReadsGoAroundASlowOwner() throws {
        let data = SampleData.bytes(seed: 58, count: 8 << 20)
        let servers = try (0..<2).map { _ in try CannedHTTPServer() }
        for s in servers { s.serveObject(data, etag: "\"v1\"") }
        let workers = try (0..<2).map { try ClusterTests.worker("hedge-\($0)", server: servers[$0]) }
        defer { workers.forEach { $0.stopDataPlane() } }
        let endpoints = workers.map { Endpoint(host: "127.0.0.1", port: $0.port) }
        var config = ClientConfig(workers: endpoints, secret: Array("test-secret-0123456789".utf8))
        config.hedgeAfterMillis = 50
        let client = try ShoalClient(config: config)
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "o"))
        let slow = endpoints.firstIndex(of: try #require(client.owners(of: file.block(0)).first))!
        servers[slow].hold(after: 0)
        let outcome = ReadOutcome()
        try OSThread.spawn(name: "reader") { outcome.set(Result { try client.read(file, offset: 0, length: data.count) }) }
        let got = try outcome.wait().get()
        #expect(got == data)
        #expect(client.hedges.sent > 0 && client.hedges.won > 0, "\(client.hedges)")
        #expect(client.downWorkers.isEmpty)
        servers[slow].release()
        // Off by default: a client without it sends none.
        #expect(try ShoalClient(config: ClientConfig(workers: endpoints, secret: config.secret)).hedges.sent == 0)
        var bad = config
        bad.hedgeAfterMillis = 0
        #expect(throws: ShoalError.self) { try ShoalClient(config: bad) }
    }

    @Test func aMembersFileParsesAndItsErrorsNameTheKey() throws {
        let text = """
        epoch: 7
        members:
          - id: w1
            address: 127.0.0.1:7072
            weight: 2TiB
            state: draining
          - id: w0
            address: 127.0.0.1:7070
        """
        WorkerConfig.installYAMLMembers()
        let view = try MembersFile.parse(text, source: "m.yaml")
        #expect(view.epoch == 7 && view.members.map(\.id) == ["w0", "w1"])
        #expect(view.members[0].weight == 1 && view.members[0].state == .active)
        #expect(view.members[1].weight == Double(2 << 40) && view.members[1].state == .draining)
        #expect(try MembersFile.parse(MembersFile.render(view), source: "rendered") == view)
        let cases: [(String, String)] = [
            ("members: []", "'epoch' is missing"),
            ("epoch: -1\nmembers: []", "'epoch' is '-1'"),
            ("epoch: 1\nmembers: [{id: a, address: nowhere}]", "members[0].address 'nowhere' is not host:port"),
            ("epoch: 1\nmembers: [{id: a, address: 'h:1', state: gone}]", "members[0].state 'gone' is not one of"),
            ("epoch: 1\nmembers: [{id: a, address: 'h:1', weight: lots}]", "members[0].weight 'lots'"),
            ("epoch: 1\nmembers: [{id: a, address: 'h:1', colour: red}]", "members[0]: unknown key 'colour'"),
            ("epoch: 1\nmembers: [{id: a, address: 'h:1'}, {id: a, address: 'h:2'}]", "member id 'a' appears twice"),
            ("epoch: 1\nmembers: [{id: a, address: 'h:1'}]\nextra: 1", "unknown key 'extra'"),
            ("epoch: [", "not valid YAML"),
        ]
        for (bad, says) in cases {
            #expect { _ = try MembersFile.parse(bad, source: "m.yaml") } throws: { error in
                let message = (error as? ShoalError)?.message ?? ""
                return message.hasPrefix("members file m.yaml: ") && message.contains(says)
            }
        }
    }

    /// A client given a members file follows it: a member drained in the file gets no more
    /// reads, a file that does not parse (or goes back in epoch) leaves the last good view in use
    /// and says why.
    @Test func aClientFollowsItsMembersFile() throws {
        let data = SampleData.bytes(seed: 50, count: 16 << 20)
        let (_, bucket, workers) = try ClusterTests.workersAndObject("members", 2, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let path = makeTemporaryDirectory("members-file") + "/members.yaml"
        let members = (0..<2).map { Member(id: "w\($0)", address: "127.0.0.1:\(workers[$0].port)") }
        try MembersFile.write(try MembershipView(epoch: 1, members: members), to: path)
        var config = ClientConfig(workers: [], secret: Array("test-secret-0123456789".utf8))
        config.membersFile = path
        let client = try ShoalClient(config: config)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(workers[1].metrics.value("shoal_bytes_served_total") > 0)

        var drained = members
        drained[1].state = .draining
        try MembersFile.write(try MembershipView(epoch: 2, members: drained), to: path)
        usleep(1_100_000)  // the file is looked at once a second at most
        let served = workers[1].metrics.value("shoal_bytes_served_total")
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.view.epoch == 2 && client.viewError == nil)
        #expect(workers[1].metrics.value("shoal_bytes_served_total") == served, "a drained member got reads")

        try FileSystem.writeFile(path, Array("epoch: 3\nmembers: [{id: w0, address: nowhere}]\n".utf8))
        usleep(1_100_000)
        #expect(try client.read(file, offset: 0, length: 4096) == Array(data[0..<4096]))
        #expect(client.view.epoch == 2)
        #expect(client.viewError?.contains("members[0].address 'nowhere' is not host:port") == true, "\(client.viewError ?? "")")

        try MembersFile.write(try MembershipView(epoch: 1, members: members), to: path)
        usleep(1_100_000)
        #expect(client.view.epoch == 2)
        #expect(client.viewError?.contains("epoch 1, older than the view in use (2)") == true, "\(client.viewError ?? "")")
    }

    /// Workers that know the members file refuse a READ routed by an older view for a block they
    /// neither own nor fall back for; the client reads its view again and sends it to the owner.
    @Test func aReadRoutedByAnOldViewGoesWhereTheNewOneSays() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("epochs")
        let data = SampleData.bytes(seed: 51, count: 16 << 20)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let path = makeTemporaryDirectory("epochs-file") + "/members.yaml"
        // The workers' ports are known once they run: placeholders first, then the real ones.
        try MembersFile.write(try MembershipView(epoch: 1, members: (0..<2).map { Member(id: "w\($0)", address: "127.0.0.1:1") }), to: path)
        let workers = try (0..<2).map { i -> Worker in
            var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("epochs-\(i)"), store: fx.storeConfig())
            config.membersFile = path
            config.memberID = "w\(i)"
            config.handoverSeconds = 0  // what w1 serves is what clients ask of it
            let w = try Worker(config: config, logger: testLogger)
            (w.service.members?.source as? MembersWatcher)?.recheckNanos = 0
            try w.start()
            return w
        }
        defer { workers.forEach { $0.stopDataPlane() } }
        let members = (0..<2).map { Member(id: "w\($0)", address: "127.0.0.1:\(workers[$0].port)") }
        try MembersFile.write(try MembershipView(epoch: 1, members: members), to: path)
        var config = ClientConfig(workers: [], secret: Array("test-secret-0123456789".utf8))
        config.membersFile = path
        config.membersRecheckSeconds = 3600  // it learns of the next view only from a worker
        let client = try ShoalClient(config: config)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        let served = workers[1].metrics.value("shoal_bytes_served_total")
        #expect(served > 0)

        var drained = members
        drained[1].state = .draining
        try MembersFile.write(try MembershipView(epoch: 2, members: drained), to: path)
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.view.epoch == 2)
        #expect(workers[1].metrics.value("shoal_errors_total{kind=\"not_owner\"}") > 0, "the old view's reads were refused")
        #expect(workers[1].metrics.value("shoal_bytes_served_total") == served, "w1 served nothing it no longer owns")
        // A worker's configuration must name a member of its file.
        var stranger = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("epochs-x"), store: fx.storeConfig())
        stranger.membersFile = path
        stranger.memberID = "w9"
        #expect { _ = try Worker(config: stranger, logger: testLogger) } throws: { ($0 as? ShoalError)?.message.contains("'w9' is not a member") == true }
    }

    /// When a block's owner and fallback are both unreachable, a client allowed to reads the
    /// store itself (the version it opened, If-Match); one that is not fails naming the workers.
    @Test func withEveryWorkerGoneAClientMayReadTheStoreItself() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("direct")
        let data = SampleData.bytes(seed: 54, count: 6 << 20)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let worker = try Worker(config: testWorkerConfig(cacheDirectory: makeTemporaryDirectory("direct"), store: fx.storeConfig()), logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let relays = try (0..<2).map { _ in try TCPRelay(to: Endpoint(host: "127.0.0.1", port: worker.port)) }
        var config = ClientConfig(workers: relays.map(\.endpoint), secret: Array("test-secret-0123456789".utf8))
        config.timeoutMillis = 1000
        config.connectTimeoutMillis = 500
        var allowed = config
        allowed.directStores = ["default": fx.credentials]
        let client = try ShoalClient(config: allowed)
        let strict = try ShoalClient(config: config)
        let ref = ObjectRef(store: "default", bucket: bucket, key: "o")
        let file = try client.open(ref)
        let strictFile = try strict.open(ref)
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        relays.forEach { $0.cut() }
        #expect(try client.read(file, offset: 12345, length: 5 << 20) == Array(data[12345..<(12345 + (5 << 20))]))
        #expect { _ = try strict.read(strictFile, offset: 0, length: data.count) } throws: { error in
            let message = (error as? ShoalError)?.message ?? ""
            return message.contains("unreachable") || message.contains("refused")
        }
        // A version that changed is not read directly either.
        try fx.store().put(bucket: bucket, key: "o", bytes: Array(data.reversed()))
        #expect(throws: ShoalError.self) { _ = try client.read(file, offset: 0, length: 4096) }
    }
}
