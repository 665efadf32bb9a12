import Foundation
import Glibc
import Testing
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTestSupport

/// A worker run as its own process (the `shoal` binary), so it can be killed with SIGKILL.
final class WorkerProcess {
    let config: String
    let listen: Endpoint
    let log: String
    /// What the command starts with (e.g. `ip netns exec NAME`).
    let launcher: String
    var pid: Int32 = 0

    var port: UInt16 { listen.port }

    /// A worker of the config file `config`, listening on `listen`.
    init(config: String, listen: Endpoint, log: String, launcher: String = "") {
        self.config = config
        self.listen = listen
        self.log = log
        self.launcher = launcher
    }

    convenience init(directory: String, fx: ObjectStoreFixture, secret: String) throws {
        let binary = repositoryRoot + "/.build/debug/shoal"
        guard FileSystem.exists(binary) else {
            throw FixtureError(message: "\(binary) is missing: build it first (Tools/test.sh runs swift build before swift test)")
        }
        // It is killed and restarted on this port: outside the ephemeral range, so a client
        // connecting while it is down is refused rather than reaching itself.
        let port = try freePortBelowEphemeralRange()
        self.init(config: directory + "/worker.yaml", listen: Endpoint(host: "127.0.0.1", port: port), log: directory + "/worker.log")
        try FileSystem.createDirectories(directory + "/cache")
        try FileSystem.writeFile(config, Array(WorkerProcess.configText(listen: "127.0.0.1:\(port)", secret: "secret: \(secret)",
                                                                        directory: directory, credentialsFile: fx.envFile).utf8))
    }

    /// A test worker's config: 1 MiB blocks, a small cache in `directory`, no admin port.
    static func configText(listen: String, secret: String, directory: String, credentialsFile: String, extra: String = "") -> String {
        """
        listen: \(listen)
        admin: "off"
        \(secret)
        blockSize: 1MiB
        buffers: 8
        metadataTTL: 0
        \(extra)caches:
          - path: \(directory)/cache
            capacity: 256MiB
            regionSize: 8MiB
        stores:
          - name: default
            type: s3
            credentialsFile: \(credentialsFile)

        """
    }

    func start() throws {
        let pidFile = config + ".pid"
        let rc = system("\(launcher) '\(repositoryRoot)/.build/debug/shoal' worker --config '\(config)' --log-level warning >> '\(log)' 2>&1 & echo $! > '\(pidFile)'")
        guard rc == 0, let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let p = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw FixtureError(message: "could not start the worker process")
        }
        pid = p
        for _ in 0..<100 {
            if (try? TCPSocket.connect(listen, timeoutMillis: 200)) != nil { return }
            usleep(50_000)
        }
        throw FixtureError(message: "the worker process did not listen; its log: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    }

    func kill9() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    func stop() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}

@Suite(.serialized) struct CrashTests {
    @Test func killDashNineDuringFillsNeverServesAWrongByte() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("crash")
        let secret = "crash-secret-0123456789"
        let worker = try WorkerProcess(directory: makeTemporaryDirectory("crash"), fx: fx, secret: secret)
        let a = SampleData.bytes(seed: 51, count: 24 << 20)
        let b = SampleData.bytes(seed: 52, count: 96 << 20)
        try fx.store().put(bucket: bucket, key: "a", bytes: a)
        try fx.store().put(bucket: bucket, key: "b", bytes: b)
        try worker.start()
        func client() throws -> ShoalClient {
            try ShoalClient(config: ClientConfig(workers: [Endpoint(host: "127.0.0.1", port: worker.port)], secret: Array(secret.utf8)))
        }
        let refA = ObjectRef(store: "default", bucket: bucket, key: "a")
        let refB = ObjectRef(store: "default", bucket: bucket, key: "b")
        let c1 = try client()
        #expect(try c1.read(c1.open(refA), offset: 0, length: a.count) == a)
        // Read b in the background and kill the worker while its blocks are being filled.
        let c2 = try client()
        let done = DispatchSemaphore(value: 0)
        let finished = ResultBox(count: 1)
        DispatchQueue.global().async {
            finished.set(0, (try? c2.read(c2.open(refB), offset: 0, length: b.count)) != nil)
            done.signal()
        }
        usleep(60_000)
        worker.kill9()
        done.wait()
        #expect(!finished.all, "the worker was killed only after the read finished: no write was interrupted")

        try worker.start()
        defer { worker.stop() }
        let c3 = try client()
        #expect(try c3.read(c3.open(refA), offset: 0, length: a.count) == a, "a block cached before the crash came back wrong")
        #expect(try c3.read(c3.open(refB), offset: 0, length: b.count) == b, "a block written during the crash came back wrong")
        #expect(try c3.read(c3.open(refB), offset: 0, length: b.count) == b)
    }
}
