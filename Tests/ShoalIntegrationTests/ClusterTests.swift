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
}
