#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import ShoalClient
@testable import ShoalCore
@testable import ShoalSys
import ShoalTransport
@testable import ShoalWorker
import ShoalTestSupport

/// Membership through a real etcd (authentication on): workers register with a lease, clients
/// and workers watch the prefix.
@Suite(.serialized) struct EtcdTests {
    static let secret = Array("test-secret-0123456789".utf8)

    /// `n` in-process workers registered under `prefix` (ids w0, w1, ...), and a bucket holding
    /// `data` as "o".
    static func cluster(_ name: String, _ n: Int, prefix: String, data: [UInt8], etcdEndpoint: String? = nil,
                        rdma: WorkerConfig.RDMASettings? = nil) throws -> (String, [Worker]) {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket(name)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let workers = try (0..<n).map { i in try worker(name, i, prefix: prefix, etcdEndpoint: etcdEndpoint, rdma: rdma) }
        return (bucket, workers)
    }

    /// Worker `wI` registered under `prefix`, started.
    static func worker(_ name: String, _ i: Int, prefix: String, etcdEndpoint: String? = nil, handoverSeconds: Double = 600,
                       handoverRate: Double? = nil, rdma: WorkerConfig.RDMASettings? = nil) throws -> Worker {
        let fx = try ObjectStoreFixture.get()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("\(name)-\(i)"), store: fx.storeConfig())
        config.rdma = rdma
        config.memberID = "w\(i)"
        config.etcd = try EtcdFixture.get().settings(prefix: prefix, endpoint: etcdEndpoint)
        config.handoverSeconds = handoverSeconds
        if let handoverRate { config.handoverRate = handoverRate }
        let w = try Worker(config: config, logger: testLogger)
        try w.start()
        return w
    }

    static func storeGETs(_ workers: [Worker]) -> Double { workers.map { $0.metrics.value("shoal_fills_total") }.reduce(0, +) }

    static func clientConfig(prefix: String, endpoint: String? = nil) throws -> ClientConfig {
        let etcd = try EtcdFixture.get()
        var config = ClientConfig(workers: [], secret: secret)
        config.etcdEndpoints = [endpoint ?? etcd.endpoint]
        config.etcdPrefix = prefix
        config.etcdUser = etcd.user
        config.etcdPassword = etcd.password
        config.markDownSeconds = 0.5
        return config
    }

    static func etcdClient() throws -> EtcdClient {
        let etcd = try EtcdFixture.get()
        return try EtcdClient(endpoints: [etcd.endpoint], user: etcd.user, password: etcd.password)
    }

    /// Waits up to `seconds` for `condition`.
    static func eventually(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        while monotonicNanos() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// Workers register themselves (address, weight = cache capacity, active); a client given
    /// only etcd learns the view and reads an object spread over all of them byte-exact, each
    /// block filled by its owner.
    @Test func workersRegisterAndAClientGivenEtcdReadsThroughThem() throws {
        let prefix = try EtcdFixture.get().makePrefix("register")
        let data = SampleData.bytes(seed: 91, count: 12 << 20)
        let (bucket, workers) = try EtcdTests.cluster("etcd-reg", 3, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let view = client.view
        #expect(view.members.map(\.id) == ["w0", "w1", "w2"])
        #expect(view.members.allSatisfy { $0.state == .active && $0.weight == Double(workers[0].cache.capacity) })
        #expect(view.members.map(\.address) == workers.map { "127.0.0.1:\($0.port)" })
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        let blocks = workers.map { $0.cache.blockCount }
        #expect(blocks.reduce(0, +) == 12, "each of the 12 blocks cached once across the cluster: \(blocks)")
        // Each block was filled by its owner in the view (the bucket's name is random, so how
        // many each worker owns is too; a worker may own none of 12).
        let owned = workers.map { w in (0..<12).filter { client.owners(of: file.block(UInt64($0))).first == Endpoint(host: "127.0.0.1", port: w.port) }.count }
        #expect(blocks == owned, "blocks cached \(blocks), owned in the view \(owned)")
        #expect(owned.filter { $0 > 0 }.count >= 2, "\(owned)")
        // The workers see the same members, and say so in /status.
        let status = workers[1].statusJSON()
        #expect(status.contains("\"memberID\":\"w1\"") && status.contains("\"viewError\":null") && status.contains("\"registrationError\":null"))
    }

    /// A client given one worker's address learns the whole view from it (MEMBERS), reads over
    /// every member, and follows the view as it changes; told not to, it keeps to its list.
    @Test func aClientGivenOneWorkerLearnsTheView() throws {
        let prefix = try EtcdFixture.get().makePrefix("learn")
        let data = SampleData.bytes(seed: 96, count: 12 << 20)
        var (bucket, workers) = try EtcdTests.cluster("etcd-learn", 3, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        var config = ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: workers[1].port)], secret: EtcdTests.secret)
        config.membersRecheckSeconds = 0
        let client = try ShoalClient(config: config)
        // The worker's own watch may be a moment behind the last registration.
        #expect(EtcdTests.eventually(3) { client.view.members.map(\.id) == ["w0", "w1", "w2"] })
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        // Each block was filled by its owner in the learned view (all three of them).
        let owned = workers.map { w in (0..<12).filter { client.owners(of: file.block(UInt64($0))).first == Endpoint(host: "127.0.0.1", port: w.port) }.count }
        #expect(workers.map { $0.cache.blockCount } == owned)
        #expect(owned.filter { $0 > 0 }.count >= 2, "\(owned)")
        workers.append(try EtcdTests.worker("etcd-learn", 3, prefix: prefix))
        #expect(EtcdTests.eventually(3) { client.view.members.count == 4 })
        #expect(try client.read(file, offset: 0, length: data.count) == data)

        config.learnsView = false
        let pinned = try ShoalClient(config: config)
        #expect(pinned.view.members.map(\.address) == ["127.0.0.1:\(workers[1].port)"])
        #expect(try pinned.read(file, offset: 0, length: data.count) == data)
    }

    /// A worker that stops revokes its lease: it leaves every view at once, and the client's
    /// reads go to the others. One that dies without a word leaves when its lease runs out.
    @Test func aStoppedWorkerLeavesAtOnceAndADeadOneWhenItsLeaseRunsOut() throws {
        let prefix = try EtcdFixture.get().makePrefix("leave")
        let data = SampleData.bytes(seed: 92, count: 8 << 20)
        let (bucket, workers) = try EtcdTests.cluster("etcd-leave", 2, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        #expect(client.view.members.count == 2)
        let started = monotonicNanos()
        workers[1].stopDataPlane()
        #expect(EtcdTests.eventually(2) { client.view.members.map(\.id) == ["w0"] }, "the stopped worker is still in the view")
        #expect(monotonicNanos() - started < 2_000_000_000)
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(workers[0].cache.blockCount == 8)

        // An entry whose lease is not renewed (a worker killed with SIGKILL) goes after its TTL.
        let etcd = try EtcdTests.etcdClient()
        let lease = try etcd.grant(ttlSeconds: 2)
        try etcd.put(EtcdMembers.memberKey(prefix: prefix, id: "ghost"), Array("{\"address\":\"127.0.0.1:9\",\"weight\":1}".utf8), lease: lease)
        #expect(EtcdTests.eventually(2) { client.view.members.map(\.id) == ["ghost", "w0"] })
        #expect(EtcdTests.eventually(6) { client.view.members.map(\.id) == ["w0"] }, "the unrenewed entry outlived its lease")
    }

    /// A registration whose lease was lost (etcd restored, or the lease revoked by hand) is put
    /// back with a new lease by the worker's next renewal.
    @Test func aLostRegistrationIsPutBack() throws {
        let prefix = try EtcdFixture.get().makePrefix("lost")
        let (_, workers) = try EtcdTests.cluster("etcd-lost", 1, prefix: prefix, data: [1, 2, 3])
        defer { workers.forEach { $0.stopDataPlane() } }
        let etcd = try EtcdTests.etcdClient()
        let key = EtcdMembers.memberKey(prefix: prefix, id: "w0")
        #expect(try etcd.range(prefix: key).kvs.count == 1)
        try etcd.delete(key)
        // Renewals every leaseSeconds/3 (1 s): the entry comes back within a couple of them.
        #expect(EtcdTests.eventually(4) { (try? etcd.range(prefix: key).kvs.count) == 1 }, "the worker did not register again")
    }

    /// `drain` (a key beside the member's) takes a member out of placement in every view; the
    /// client's reads go to the others; removing the key puts it back.
    @Test func aDrainKeyMakesAMemberDraining() throws {
        let prefix = try EtcdFixture.get().makePrefix("drain")
        let data = SampleData.bytes(seed: 93, count: 8 << 20)
        let (bucket, workers) = try EtcdTests.cluster("etcd-drain", 2, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let etcd = try EtcdTests.etcdClient()
        try etcd.put(EtcdMembers.drainKey(prefix: prefix, id: "w1"), [])
        #expect(EtcdTests.eventually(2) { client.view.members.last?.state == .draining })
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(workers[1].cache.blockCount == 0 && workers[0].cache.blockCount == 8)
        // The drained worker sees it too.
        #expect(EtcdTests.eventually(2) { workers[1].statusJSON().contains("\"state\":\"draining\"") })
        try etcd.delete(EtcdMembers.drainKey(prefix: prefix, id: "w1"))
        #expect(EtcdTests.eventually(2) { client.view.members.last?.state == .active })
    }

    /// A worker that joins takes the blocks it now owns from their previous owners instead of the
    /// store (with hand-over on; off, it fills them again), and a member that is drained gives
    /// its blocks to their new owners the same way: the cluster's store GETs stay at one per block.
    @Test(arguments: [true, false]) func aJoinAndADrainHandBlocksOverWithoutStoreGETs(handover: Bool) throws {
        let prefix = try EtcdFixture.get().makePrefix("handover")
        let data = SampleData.bytes(seed: 95, count: 24 << 20)
        var (bucket, workers) = try EtcdTests.cluster("etcd-hand", 2, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(EtcdTests.storeGETs(workers) == 24)

        workers.append(try EtcdTests.worker("etcd-hand", 2, prefix: prefix, handoverSeconds: handover ? 600 : 0))
        #expect(EtcdTests.eventually(3) { client.view.members.count == 3 })
        let moved = (0..<24).filter { client.owners(of: file.block(UInt64($0))).first == Endpoint(host: "127.0.0.1", port: workers[2].port) }.count
        #expect(moved > 0, "the new worker owns none of 24 blocks")
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        if handover {
            #expect(EtcdTests.storeGETs(workers) == 24, "blocks that moved were fetched from the store again")
            #expect(workers[2].metrics.value("shoal_handover_hits_total") == Double(moved))
        } else {
            #expect(EtcdTests.storeGETs(workers) == Double(24 + moved))
            #expect(workers[2].metrics.value("shoal_handover_asked_total") == 0)
        }
        guard handover else { return }
        // Drain w0: its blocks go to the others, which take them from it.
        try EtcdTests.etcdClient().put(EtcdMembers.drainKey(prefix: prefix, id: "w0"), [])
        #expect(EtcdTests.eventually(3) { client.view.members.first?.state == .draining })
        #expect(EtcdTests.eventually(3) { workers[1].statusJSON().contains("\"state\":\"draining\"") && workers[2].statusJSON().contains("\"state\":\"draining\"") })
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(EtcdTests.storeGETs(workers) == 24, "the drained worker's blocks were fetched from the store again")
        #expect(workers[1].metrics.value("shoal_handover_hits_total") + workers[2].metrics.value("shoal_handover_hits_total") > Double(moved))
    }

    /// A worker that joins a cluster whose cache holds none of what is then read (a cold
    /// dataset) asks the blocks' previous owners for a sample only, once each has answered a
    /// run of misses: not a round trip between workers per block. A block its previous owner
    /// pushes to it (flag bit 5: that member holds it) is still taken from there.
    @Test func aJoinBeforeAColdReadAsksThePreviousOwnersForASampleOnly() throws {
        let prefix = try EtcdFixture.get().makePrefix("cold-join")
        let data = SampleData.bytes(seed: 96, count: 24 << 20)
        let bucket = try ObjectStoreFixture.get().makeBucket("etcd-coldjoin")
        let store = try ObjectStoreFixture.get().store()
        try store.put(bucket: bucket, key: "o", bytes: data)
        // The first two push nothing on their own: the one push below is the test's.
        var all = try (0..<2).map { i in try EtcdTests.worker("etcd-coldjoin", i, prefix: prefix, handoverRate: 0) }
        defer { all.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)  // cached on w0 and w1
        let count = 400
        for i in 0..<count { try store.put(bucket: bucket, key: "cold/\(i)", bytes: SampleData.bytes(seed: UInt64(300 + i), count: 1024)) }
        all.append(try EtcdTests.worker("etcd-coldjoin", 2, prefix: prefix))
        #expect(EtcdTests.eventually(3) { client.view.members.count == 3 })
        for i in 0..<count {
            let cold = try client.open(ObjectRef(store: "default", bucket: bucket, key: "cold/\(i)"))
            #expect(try client.read(cold, offset: 0, length: 1024) == SampleData.bytes(seed: UInt64(300 + i), count: 1024))
        }
        let joined = all[2].metrics
        let (fills, asked, skipped) = (joined.value("shoal_fills_total"), joined.value("shoal_handover_asked_total"), joined.value("shoal_handover_skipped_total"))
        // 66 misses give one of the two previous owners 33 or more: past the 32 before sampling.
        #expect(fills >= 66, "the new worker filled \(fills) of \(count) blocks")
        // Each miss had a previous owner: asked, or skipped once that owner had missed 32 in a row
        // (fewer where an owner was left alone for not answering in time).
        #expect(asked + skipped <= fills)
        #expect(joined.value("shoal_handover_hits_total") == 0)
        #expect(skipped > 0 && asked < fills, "asked \(asked), skipped \(skipped) of \(fills) misses")

        // A push of a block of "o" that moved to the new worker: taken from its previous owner.
        let here = Endpoint(host: "127.0.0.1", port: all[2].port)
        let moved = try #require((0..<24).first { client.owners(of: file.block(UInt64($0))).first == here }, "the new worker owns none of 24 blocks")
        let gets = EtcdTests.storeGETs(all)
        let pusher = try WorkerConnection(endpoint: here, secret: EtcdTests.secret)
        defer { pusher.close() }
        pusher.acceptsNoData = true
        var none: UInt8 = 0
        let push = ReadRequest(block: file.block(UInt64(moved)), offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag | ReadRequest.pushFlag,
                               epoch: client.view.epoch)
        let id = try withUnsafeMutableBytes(of: &none) { p throws(ShoalError) in try pusher.sendRead(push, into: p.baseAddress!, length: 0) }
        try pusher.receiveRead(id: id)
        #expect(joined.value("shoal_handover_hits_total") == 1)
        #expect(EtcdTests.storeGETs(all) == gets, "the pushed block was fetched from the store")
    }

    /// A drained worker pushes the blocks it cached to their new owners on its own (fill-only
    /// READs, which they answer by taking each block from it), before anyone reads them: once it
    /// is done it can leave, and a read of everything costs the store nothing.
    @Test func aDrainedWorkerHandsItsBlocksOverBeforeItLeaves() throws {
        let prefix = try EtcdFixture.get().makePrefix("push")
        let data = SampleData.bytes(seed: 97, count: 24 << 20)
        let (bucket, workers) = try EtcdTests.cluster("etcd-push", 3, prefix: prefix, data: data)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(EtcdTests.storeGETs(workers) == 24)
        let held = workers[0].cache.blockCount
        #expect(held > 0)
        try EtcdTests.etcdClient().put(EtcdMembers.drainKey(prefix: prefix, id: "w0"), [])
        #expect(EtcdTests.eventually(10) { workers[0].metrics.value("shoal_handover_pushed_total") == Double(held) },
                "pushed \(workers[0].metrics.value("shoal_handover_pushed_total")) of \(held)")
        let taken = workers[1].metrics.value("shoal_handover_hits_total") + workers[2].metrics.value("shoal_handover_hits_total")
        #expect(taken == Double(held))
        workers[0].stopDataPlane()  // it leaves
        #expect(EtcdTests.eventually(3) { client.view.members.map(\.id) == ["w1", "w2"] })
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(EtcdTests.storeGETs(workers) == 24, "blocks of the worker that left came from the store again")
        #expect(workers[1].cache.blockCount + workers[2].cache.blockCount == 24)
    }

    /// A value that does not parse keeps the last good view, and the client and every worker
    /// say which key and why; once it is fixed, the error clears.
    @Test func aBadValueKeepsTheLastViewAndSaysWhy() throws {
        let prefix = try EtcdFixture.get().makePrefix("bad")
        let (_, workers) = try EtcdTests.cluster("etcd-bad", 1, prefix: prefix, data: [1, 2, 3])
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix))
        let before = client.view
        let etcd = try EtcdTests.etcdClient()
        let key = EtcdMembers.memberKey(prefix: prefix, id: "broken")
        try etcd.put(key, Array("{\"address\":\"nowhere\"}".utf8))
        #expect(EtcdTests.eventually(2) { client.viewError?.contains(key) == true })
        #expect(client.viewError?.contains("not host:port") == true, "\(client.viewError ?? "no error")")
        #expect(client.view == before)
        #expect(EtcdTests.eventually(2) { workers[0].statusJSON().contains("not host:port") })
        try etcd.delete(key)
        #expect(EtcdTests.eventually(2) { client.viewError == nil })
        #expect(client.view.members.map(\.id) == ["w0"])
    }

    /// etcd cut off (a relay in front of it stops): the workers keep serving, the client keeps
    /// its last view and reads on, and both say etcd cannot be reached.
    @Test func etcdUnreachableKeepsTheViewAndTheReads() throws {
        let etcd = try EtcdFixture.get()
        let relay = try TCPRelay(to: Endpoint(etcd.endpoint)!)
        let prefix = etcd.makePrefix("cut")
        let data = SampleData.bytes(seed: 94, count: 6 << 20)
        let (bucket, workers) = try EtcdTests.cluster("etcd-cut", 2, prefix: prefix, data: data, etcdEndpoint: relay.endpoint.description)
        defer { workers.forEach { $0.stopDataPlane() } }
        let client = try ShoalClient(config: EtcdTests.clientConfig(prefix: prefix, endpoint: relay.endpoint.description))
        #expect(client.view.members.count == 2)
        relay.cut()
        // A forced look (as after not_owner) fails and keeps the view.
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        #expect(try client.read(file, offset: 0, length: data.count) == data)
        #expect(client.view.members.count == 2)
        #expect(EtcdTests.eventually(6) { workers[0].statusJSON().contains("etcd") && !workers[0].statusJSON().contains("\"registrationError\":null") },
                "the worker does not say that etcd is unreachable")
        #expect(try client.read(file, offset: 0, length: data.count) == data)
    }

    /// Wrong credentials, a missing prefix and an unreachable etcd each give one clear error.
    @Test func aClientThatCannotGetAViewSaysWhy() throws {
        let etcd = try EtcdFixture.get()
        var config = try EtcdTests.clientConfig(prefix: etcd.makePrefix("nobody"))
        #expect(throws: ShoalError.self) { try ShoalClient(config: config) }
        do { _ = try ShoalClient(config: config) } catch { #expect(error.message.contains("no members registered")) }
        config.etcdPassword = "wrong"
        do { _ = try ShoalClient(config: config); Issue.record("a wrong password was taken") } catch {
            #expect(error.message.contains("authentication failed") || error.message.contains("password"), "\(error.message)")
        }
        config.etcdEndpoints = ["127.0.0.1:1"]
        do { _ = try ShoalClient(config: config); Issue.record("an unreachable etcd gave a view") } catch {
            #expect(error.message.contains("etcd unreachable"), "\(error.message)")
        }
        // Without credentials etcd refuses (its authentication is on).
        let anonymous = try EtcdClient(endpoints: [etcd.endpoint])
        #expect(throws: ShoalError.self) { try anonymous.put("/shoal/x", [1]) }
    }

    /// The members under a prefix: ids from the keys, drain keys applied, the revision as the
    /// epoch; keys of other kinds ignored; unknown fields refused.
    @Test func theViewIsMadeFromTheKeys() throws {
        func kv(_ key: String, _ value: String) -> EtcdClient.KeyValue { EtcdClient.KeyValue(key: key, value: Array(value.utf8), modRevision: 1) }
        let view = try EtcdMembers.view(prefix: "/shoal/c", revision: 42, kvs: [
            kv("/shoal/c/members/b", "{\"address\":\"10.0.0.2:7070\",\"weight\":2}"),
            kv("/shoal/c/members/a", "{\"address\":\"10.0.0.1:7070\",\"weight\":\"1GiB\",\"state\":\"joining\"}"),
            kv("/shoal/c/drain/b", ""),
            kv("/shoal/c/other", "x"),
        ])
        #expect(view.epoch == 42)
        #expect(view.members == [Member(id: "a", address: "10.0.0.1:7070", weight: Double(1 << 30), state: .joining),
                                 Member(id: "b", address: "10.0.0.2:7070", weight: 2, state: .draining)])
        #expect(throws: ShoalError.self) { try EtcdMembers.view(prefix: "/shoal/c/", revision: 1, kvs: [kv("/shoal/c/members/a", "{\"address\":\"h:1\",\"colour\":1}")]) }
        #expect(throws: ShoalError.self) { try EtcdMembers.view(prefix: "/shoal/c/", revision: 1, kvs: [kv("/shoal/c/members/a", "[1,2]")]) }
        #expect(EtcdClient.rangeEnd("/shoal/c/") == Array("/shoal/c0".utf8))
    }
}
