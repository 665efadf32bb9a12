import Testing
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTestSupport

/// The settings every client front end takes by name (command line, libshoal, Python).
@Suite struct ClientSettingsTests {
    func secretFile() throws -> String {
        let dir = makeTemporaryDirectory("settings")
        let path = dir + "/secret"
        try FileSystem.writeFile(path, Array("0123456789abcdef0123456789abcdef\n".utf8), permissions: 0o600)
        return path
    }

    @Test func settingsAndTheEnvironmentMakeAConfig() throws {
        let secret = try secretFile()
        let text = "workers=127.0.0.1:7070, 127.0.0.1:7072\nsecret_file=\(secret)\nconnections=3\ntimeout_ms=2500\nview_discovery=false\nhedge_after_ms=40\n# a comment\n"
        let c = try ClientSettings.config(try ClientSettings.parse(text), environment: { _ in nil })
        #expect(c.workers.map(\.description) == ["127.0.0.1:7070", "127.0.0.1:7072"])
        #expect(c.secret == Array("0123456789abcdef0123456789abcdef".utf8))
        #expect(c.connectionsPerWorker == 3 && c.timeoutMillis == 2500 && !c.learnsView && c.hedgeAfterMillis == 40)
        // One line with ';' works too; the environment fills what is not given, membership only
        // when no membership setting is.
        let env = ["SHOAL_ETCD": "10.0.0.1:2379,10.0.0.2:2379", "SHOAL_SECRET_FILE": secret, "SHOAL_ETCD_PREFIX": "/shoal/x/", "SHOAL_WORKERS": "h:1"]
        let fromEnv = try ClientSettings.config(try ClientSettings.parse("connect_timeout_ms=300;client_name=job-7"), environment: { env[$0] })
        #expect(fromEnv.etcdEndpoints == ["10.0.0.1:2379", "10.0.0.2:2379"] && fromEnv.etcdPrefix == "/shoal/x/" && fromEnv.workers.isEmpty)
        #expect(fromEnv.connectTimeoutMillis == 300 && fromEnv.clientName == "job-7")
        let given = try ClientSettings.config(["workers": "h:2"], environment: { env[$0] })
        #expect(given.etcdEndpoints.isEmpty && given.workers.map(\.description) == ["h:2"])
    }

    @Test func badSettingsNameTheKey() throws {
        let secret = try secretFile()
        func expectError(_ text: String, mentions: String) {
            #expect {
                _ = try ClientSettings.config(try ClientSettings.parse(text), environment: { _ in nil })
            } throws: { error in
                let message = (error as? ShoalError)?.message ?? ""
                return message.contains(mentions) ? true : { Issue.record("'\(message)' does not mention \(mentions)"); return true }()
            }
        }
        expectError("colour=red", mentions: "unknown setting 'colour'")
        expectError("workers", mentions: "not key=value")
        expectError("workers=a:1;workers=b:1", mentions: "'workers' is given twice")
        expectError("secret_file=\(secret)", mentions: "no worker given")
        expectError("workers=nowhere;secret_file=\(secret)", mentions: "'workers': 'nowhere' is not host:port")
        expectError("workers=h:1", mentions: "no cluster secret")
        expectError("workers=h:1;secret_file=/nonexistent/secret", mentions: "/nonexistent/secret")
        expectError("workers=h:1;secret_file=\(secret);connections=0", mentions: "'connections' is '0'")
        expectError("workers=h:1;secret_file=\(secret);timeout_ms=soon", mentions: "'timeout_ms'")
        expectError("workers=h:1;secret_file=\(secret);view_discovery=maybe", mentions: "'view_discovery'")
        expectError("workers=h:1;secret_file=\(secret);client_name=\(String(repeating: "n", count: 65))", mentions: "'client_name'")
    }
}
