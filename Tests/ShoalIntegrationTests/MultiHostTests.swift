import Foundation
import Glibc
import Testing
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTestSupport

/// A host of its own: a network namespace joined to this one by a veth pair (10.77.N.1 here,
/// 10.77.N.2 there), relays on 10.77.N.1 to the object store and to etcd (which listen on
/// loopback only), and a worker process inside, on 10.77.N.2:7070, registered in etcd as wN.
/// Needs root.
final class NamespaceHost {
    let index: Int
    let name: String
    let hostSide: String
    let address: String
    let storeRelay: TCPRelay
    let etcdRelay: TCPRelay
    let directory: String
    let worker: WorkerProcess

    static func sh(_ command: String) throws {
        let (status, output) = runProcess("/bin/bash", ["-c", command])
        guard status == 0 else { throw FixtureError(message: "`\(command)` failed: \(output)") }
    }

    init(index: Int, fx: ObjectStoreFixture, etcd: EtcdFixture, prefix: String, secretFile: String) throws {
        self.index = index
        let tag = "\(getpid() % 10000)"
        name = "shoal\(tag)n\(index)"
        hostSide = "sh\(tag)h\(index)"
        let nsSide = "sh\(tag)p\(index)"
        address = "10.77.\(index).2:7070"
        directory = makeTemporaryDirectory("host-\(index)")
        try NamespaceHost.sh("""
            ip netns add \(name) && ip link add \(hostSide) type veth peer name \(nsSide) && ip link set \(nsSide) netns \(name) \
            && ip addr add 10.77.\(index).1/24 dev \(hostSide) && ip link set \(hostSide) up \
            && ip netns exec \(name) ip addr add 10.77.\(index).2/24 dev \(nsSide) && ip netns exec \(name) ip link set \(nsSide) up \
            && ip netns exec \(name) ip link set lo up
            """)
        storeRelay = try TCPRelay(to: Endpoint(host: fx.credentials.endpoint.replacingOccurrences(of: "http://", with: "").components(separatedBy: ":")[0],
                                               port: UInt16(fx.credentials.endpoint.components(separatedBy: ":").last!)!),
                                  listenHost: "10.77.\(index).1")
        etcdRelay = try TCPRelay(to: Endpoint(etcd.endpoint)!, listenHost: "10.77.\(index).1")
        try FileSystem.createDirectories(directory + "/cache")
        try FileSystem.writeFile(directory + "/s3.env", Array("""
            SHOAL_S3_ENDPOINT=http://\(storeRelay.endpoint)
            SHOAL_S3_ACCESS_KEY=\(fx.credentials.accessKey)
            SHOAL_S3_SECRET_KEY=\(fx.credentials.secretKey)

            """.utf8))
        try FileSystem.writeFile(directory + "/worker.yaml", Array(WorkerProcess.configText(
            listen: address, secret: "secretFile: \(secretFile)", directory: directory, credentialsFile: directory + "/s3.env",
            extra: "memoryTier: 0\nmemberID: w\(index)\netcd:\n  endpoints: [\"\(etcdRelay.endpoint)\"]\n  prefix: \(prefix)\n"
                + "  leaseSeconds: 3\n  credentialsFile: \(etcd.envFile)\n").utf8))
        worker = WorkerProcess(config: directory + "/worker.yaml", listen: Endpoint(address)!, log: directory + "/worker.log",
                               launcher: "ip netns exec \(name)")
    }

    func start() throws { try worker.start() }
    func kill9() { worker.kill9() }

    /// The link goes down: nothing reaches the worker, and nothing says so.
    func cutOff() throws { try NamespaceHost.sh("ip link set \(hostSide) down") }
    func reconnect() throws { try NamespaceHost.sh("ip link set \(hostSide) up") }

    func destroy() {
        if worker.pid > 0 { kill9() }
        storeRelay.cut()
        etcdRelay.cut()
        _ = runProcess("/bin/bash", ["-c", "ip netns del \(name); ip link del \(hostSide) 2>/dev/null; true"])
    }
}

/// Several hosts, each a network namespace with its own worker process, and etcd: a client reads
/// a dataset byte-exact while one worker is killed, one is cut off (its link down) and a new one
/// joins (registers itself).
@Suite(.serialized) struct MultiHostTests {
    @Test func aClientReadsExactlyThroughAKillACutOffAndAJoin() throws {
        try #require(getuid() == 0, "the multi-host tests make network namespaces and veth pairs: run them as root (CI does)")
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("hosts")
        let data = SampleData.bytes(seed: 53, count: 24 << 20)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let shared = makeTemporaryDirectory("hosts")
        let secretFile = shared + "/secret"
        try FileSystem.writeFile(secretFile, Array("hosts-secret-0123456789".utf8), permissions: 0o600)
        let etcd = try EtcdFixture.get()
        let prefix = etcd.makePrefix("hosts")
        var hosts: [NamespaceHost] = []
        defer { hosts.forEach { $0.destroy() } }
        for i in 0..<3 {
            hosts.append(try NamespaceHost(index: i, fx: fx, etcd: etcd, prefix: prefix, secretFile: secretFile))
            try hosts[i].start()
        }
        var config = ClientConfig(workers: [], secret: Array("hosts-secret-0123456789".utf8))
        config.etcdEndpoints = [etcd.endpoint]
        config.etcdPrefix = prefix
        config.etcdUser = etcd.user
        config.etcdPassword = etcd.password
        // Short, for a test; long enough for cold fills by debug-built workers on a busy machine
        // (a worker is only taken for gone when none of those waited on sends anything in time).
        config.timeoutMillis = 3000
        config.connectTimeoutMillis = 500
        config.markDownSeconds = 1
        let client = try ShoalClient(config: config)
        #expect(client.view.members.map(\.address) == (0..<3).map { "10.77.\($0).2:7070" })
        let file = try client.open(ObjectRef(store: "default", bucket: bucket, key: "o"))
        var failed = 0
        func readAll(_ when: String) {
            do {
                let start = monotonicNanos()
                let got = try client.read(file, offset: 0, length: data.count)
                print("multi-host: read of 24 MiB, \(when): \(formatFixed(Double(monotonicNanos() - start) / 1e9, decimals: 2)) s")
                if got != data { failed += 1; Issue.record("\(when): the bytes differ") }
            } catch {
                failed += 1
                Issue.record("\(when): \(error)")
            }
        }
        readAll("all up")
        hosts[0].kill9()
        readAll("w0 killed")
        try hosts[0].start()  // back with its cache
        usleep(1_100_000)     // the client's mark on it runs out
        readAll("w0 back")
        try hosts[1].cutOff()
        readAll("w1 cut off")
        try hosts[1].reconnect()
        usleep(1_100_000)  // the client's mark on it runs out
        // A new worker joins: it registers itself once it listens, and the client's watch sees it.
        let before = client.view.epoch
        hosts.append(try NamespaceHost(index: 3, fx: fx, etcd: etcd, prefix: prefix, secretFile: secretFile))
        try hosts[3].start()
        let deadline = monotonicNanos() + 5_000_000_000
        while client.view.members.count < 4, monotonicNanos() < deadline { usleep(20_000) }
        readAll("w3 joined")
        #expect(client.view.epoch > before && client.view.members.count == 4)
        #expect((0..<24).contains { client.owners(of: file.block(UInt64($0))).first == Endpoint("10.77.3.2:7070") }, "the new worker owns blocks")
        #expect(failed == 0, "reads failed during the kill, the cut-off and the join")
    }
}
