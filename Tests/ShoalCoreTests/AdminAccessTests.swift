import Testing
import ShoalCore

@Suite struct AdminAccessTests {
    let secret = Array("s3cret".utf8)
    var access: AdminAccess { AdminAccess(secret: secret, port: 7071, hosts: ["0.0.0.0", "gpu-7"]) }
    var bearer: String { "Bearer " + AdminAccess.token(secret: secret) }

    func status(_ d: AdminAccess.Decision) -> Int {
        if case .refuse(let s, _) = d { return s }
        return 200
    }

    @Test func theTokenIsTheHexHMACOfTheLabel() {
        #expect(AdminAccess.token(secret: secret) == hmacSHA256(key: secret, message: Array("shoal-admin-v1".utf8)).hexString)
        #expect(AdminAccess.token(secret: secret).count == 64)
    }

    @Test func readsAreOpenChangesNeedTheToken() {
        #expect(access.check(method: "GET", path: "/metrics", host: "127.0.0.1:7071", origin: nil, authorization: nil) == .allow)
        #expect(status(access.check(method: "POST", path: "/pins", host: "127.0.0.1:7071", origin: nil, authorization: nil)) == 401)
        #expect(status(access.check(method: "POST", path: "/pins", host: nil, origin: nil, authorization: "Bearer abc")) == 401)
        #expect(access.check(method: "DELETE", path: "/pins", host: "localhost", origin: nil, authorization: bearer) == .allow)
    }

    @Test func hostMustNameThisWorker() {
        for host in ["127.0.0.1:7071", "localhost:7071", "[::1]:7071", "GPU-7:7071", "10.1.2.3:7071"] {
            #expect(access.check(method: "GET", path: "/status", host: host, origin: nil, authorization: nil, localAddress: "10.1.2.3") == .allow, "\(host)")
        }
        #expect(status(access.check(method: "GET", path: "/status", host: "evil.example:7071", origin: nil, authorization: nil)) == 421)
        #expect(status(access.check(method: "GET", path: "/status", host: "10.9.9.9", origin: nil, authorization: nil, localAddress: "10.1.2.3")) == 421)
        // 0.0.0.0 is a listening address, not a name a request may use.
        #expect(status(access.check(method: "GET", path: "/status", host: "0.0.0.0:7071", origin: nil, authorization: nil)) == 421)
    }

    @Test func changesFromAnotherOriginAreRefusedEvenWithTheToken() {
        #expect(status(access.check(method: "POST", path: "/pins", host: "127.0.0.1:7071", origin: "http://127.0.0.1:8080", authorization: bearer)) == 403)
        #expect(status(access.check(method: "POST", path: "/pins", host: "127.0.0.1:7071", origin: "null", authorization: bearer)) == 403)
        #expect(status(access.check(method: "POST", path: "/pins", host: "127.0.0.1:7071", origin: "https://127.0.0.1:7071", authorization: bearer)) == 403)
        #expect(access.check(method: "POST", path: "/pins", host: "127.0.0.1:7071", origin: "http://127.0.0.1:7071", authorization: bearer) == .allow)
        #expect(access.check(method: "POST", path: "/pins", host: "[::1]:7071", origin: "http://[::1]:7071", authorization: bearer) == .allow)
    }
}
