#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalSys
import ShoalTestSupport
@testable import ShoalWorker

/// A worker over a file store with its admin port on a free port, and one object in bucket "b".
struct AdminFixture {
    let worker: Worker
    let config: WorkerConfig
    let port: Int
    let data = SampleData.bytes(seed: 31, count: 3 << 20)

    init(_ name: String, limits: AdminLimits = AdminLimits()) async throws {
        var config = fileStoreWorkerConfig(name)
        config.admin = Endpoint(host: "127.0.0.1", port: 0)
        config.adminLimits = limits
        let store = FileStore(name: "default", root: config.stores[0].root)
        try store.createBucket("b")
        try store.put(bucket: "b", key: "train/x", bytes: data)
        worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        try await worker.startAdmin()
        port = try #require(worker.adminPort)
        self.config = config
    }

    /// Sends one request; the status and body.
    func request(_ method: String, _ path: String, headers: [String] = []) throws -> (Int, String) {
        var r = HTTPRequest(method: method, url: "http://127.0.0.1:\(port)\(path)")
        r.headers = headers
        let sink = HTTPBodySink(limit: 1 << 20)
        let status = try CurlEasy().perform(r, sink: sink).status
        return (status, sink.text)
    }

    var token: String { "Authorization: Bearer \(AdminAccess.token(secret: config.secret))" }
}

@Suite(.serialized) struct AdminTests {
    @Test func changesNeedTheTokenAndRequestsTheWorkersOwnHostAndOrigin() async throws {
        let a = try await AdminFixture("admin-auth")
        let pin = "/pins?prefix=\(PercentEncoding.encode("s3://b/train/"))"
        let (refused, why) = try a.request("POST", pin)
        #expect(refused == 401)
        #expect(why.contains("admin token") && why.contains("SHOAL_SECRET_FILE"), "\(why)")
        #expect(try a.request("POST", pin, headers: ["Authorization: Bearer 00"]).0 == 401)
        #expect(try a.request("POST", pin, headers: [a.token]).0 == 200)
        #expect(a.worker.cache.pins.active.count == 1)

        // A name the worker does not go by (DNS rebinding) is refused, reads included.
        let (foreign, body) = try a.request("GET", "/status", headers: ["Host: attacker.example:\(a.port)"])
        #expect(foreign == 421 && body.contains("attacker.example"), "\(body)")
        #expect(try a.request("GET", "/healthz", headers: ["Host: localhost:\(a.port)"]).0 == 200)

        // A web page's request is refused even with the token; the admin's own origin is not.
        let (page, pageBody) = try a.request("DELETE", pin, headers: [a.token, "Origin: http://127.0.0.1:8080"])
        #expect(page == 403 && pageBody.contains("origin"), "\(pageBody)")
        #expect(a.worker.cache.pins.active.count == 1)
        #expect(try a.request("DELETE", pin, headers: [a.token, "Origin: http://127.0.0.1:\(a.port)"]).0 == 200)
        #expect(a.worker.cache.pins.active.isEmpty)

        // Reads stay open.
        #expect(try a.request("GET", "/metrics").0 == 200)
        #expect(try a.request("GET", "/healthz").0 == 200)
        await a.worker.stop()
    }

    @Test func halfSentAdminRequestsDoNotStopTheDataPlaneAndAreClosed() async throws {
        var limits = AdminLimits()
        limits.requestTimeoutSeconds = 3
        limits.idleTimeoutSeconds = 2
        let a = try await AdminFixture("admin-flood", limits: limits)
        let admin = Endpoint(host: "127.0.0.1", port: UInt16(a.port))
        var stuck: [TCPSocket] = []
        for _ in 0..<320 {
            let s = try TCPSocket.connect(admin, timeoutMillis: 5_000)
            try? s.send(Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n".utf8))
            stuck.append(s)
        }
        // The data plane still serves a real read (store fill and all).
        let client = try ShoalClient(config: ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: a.worker.port)], secret: a.config.secret))
        let file = try client.open(ObjectRef(store: "default", bucket: "b", key: "train/x"))
        #expect(try client.read(file, offset: 0, length: a.data.count) == a.data)

        // Every one of them is closed by the worker (displaced by a newer one, the rest at their
        // timeout), not left open until this test's own deadline.
        var closedByWorker = 0
        let deadline = monotonicNanos() + 60_000_000_000
        for s in stuck {
            do {
                _ = try s.receive(count: 1, deadline: deadline)
            } catch let e as SysError {
                if e.errno != ETIMEDOUT { closedByWorker += 1 }
            }
            s.close()
        }
        #expect(closedByWorker == stuck.count)
        #expect(a.worker.metrics.value("shoal_admin_connections_displaced_total") > 0, "over adminMaxConnections (64), the oldest went")
        // The slots came back: the admin port answers again.
        #expect(try a.request("GET", "/healthz").0 == 200)
        await a.worker.stop()
    }

    /// adminMaxConnections connections that never send a request (no credentials needed) once
    /// kept /healthz and /metrics from everyone, renewed every few seconds: a liveness probe
    /// could fail and the worker be restarted with a cold cache. The oldest such connection now
    /// gives its place to a new one; connections being answered keep theirs.
    @Test func silentAdminConnectionsCannotKeepTheHealthCheckOut() async throws {
        var limits = AdminLimits()
        limits.maxConnections = 2
        // Long enough that the silent connections would hold their places for the whole test.
        limits.idleTimeoutSeconds = 120
        limits.requestTimeoutSeconds = 120
        let a = try await AdminFixture("admin-squat", limits: limits)
        let admin = Endpoint(host: "127.0.0.1", port: UInt16(a.port))
        let silent = try (0..<2).map { _ in try TCPSocket.connect(admin, timeoutMillis: 5_000) }
        defer { silent.forEach { $0.close() } }
        #expect(try a.request("GET", "/healthz").0 == 200)
        #expect(try a.request("GET", "/metrics").0 == 200)
        // One or both silent connections gave their places up (the second request may find the
        // first one's place free again).
        #expect(a.worker.metrics.value("shoal_admin_connections_displaced_total") >= 1)
        #expect(a.worker.metrics.value("shoal_admin_connections_refused_total") == 0)
        await a.worker.stop()
    }
}
