import Testing
import ShoalClient
import ShoalCore
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
}
