import Foundation
import Logging
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalClient
import ShoalSys
import ShoalWorker

/// The repository root, found from this file's place in it.
public let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A fresh folder under .build/test-tmp/<pid> (a real disk, so O_DIRECT works; tmpfs would not).
/// Each test process deletes its folder when it exits: cache files are preallocated, and runs
/// that left them behind once filled the disk.
public func makeTemporaryDirectory(_ name: String = "t") -> String {
    TemporaryFolders.registerCleanup
    let path = TemporaryFolders.root + "/\(name)-\(try! secureRandomBytes(4).hexString)"
    try! FileSystem.createDirectories(path)
    return path
}

enum TemporaryFolders {
    static let root = repositoryRoot + "/.build/test-tmp/\(getpid())"
    static let registerCleanup: Void = {
        atexit {
            ScriptService.stopAll()
            _ = system("rm -rf '\(TemporaryFolders.root)'")
        }
    }()
}

public let testLogger: Logger = {
    var l = Logger(label: "shoal.test", factory: { StreamLogHandler.standardError(label: $0) })
    // SHOAL_TEST_LOG=debug (or info, ...) shows the workers' logs while debugging a test.
    l.logLevel = ProcessInfo.processInfo.environment["SHOAL_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
    return l
}()

/// A service of the whole test process started by one of the project's scripts
/// (`Tools/NAME.sh start DIR PORT`), stopped by it at exit (before the folders are deleted).
enum ScriptService {
    nonisolated(unsafe) private static var started: [(script: String, directory: String)] = []
    private static let lock = ConditionLock()

    /// Starts it in a new folder; the folder, or a failure that says why (never a silent skip).
    static func start(_ name: String, what: String, port: Int) throws -> String {
        let directory = makeTemporaryDirectory(name)
        let script = repositoryRoot + "/Tools/\(name).sh"
        let (status, output) = runProcess("/bin/bash", [script, "start", directory, String(port)])
        guard status == 0 else {
            throw FixtureError(message: "Tools/\(name).sh could not start \(what) (run Tools/install-deps.sh first): \(output)")
        }
        lock.withLock { started.append((script, directory)) }
        return directory
    }

    static func stopAll() {
        let all = lock.withLock { () -> [(script: String, directory: String)] in
            defer { started.removeAll() }
            return started
        }
        for s in all { _ = runProcess("/bin/bash", [s.script, "stop", s.directory]) }
    }
}

/// A real SeaweedFS S3 endpoint for the whole test process, started with Tools/objectstore.sh
/// (authentication on, every port explicit, bound to 127.0.0.1) and stopped when the process exits.
public final class ObjectStoreFixture: @unchecked Sendable {
    public let directory: String
    public let credentials: S3Credentials
    public let envFile: String

    public static let shared: Result<ObjectStoreFixture, FixtureError> = {
        do { return .success(try ObjectStoreFixture()) } catch let e as FixtureError { return .failure(e) } catch {
            return .failure(FixtureError(message: "\(error)"))
        }
    }()

    /// The shared store, or a failure that says why it could not start (never a silent skip).
    public static func get() throws -> ObjectStoreFixture { try shared.get() }

    private init() throws {
        // Below the ephemeral range (Linux: 32768-60999), where no client socket is given the port.
        directory = try ScriptService.start("objectstore", what: "SeaweedFS", port: 20000 + Int(getpid() % 1000) * 10)
        envFile = directory + "/s3.env"
        let env = try SettingsFile.readEnvFile(envFile, key: "test")
        credentials = S3Credentials(endpoint: env["SHOAL_S3_ENDPOINT"]!, accessKey: env["SHOAL_S3_ACCESS_KEY"]!,
                                    secretKey: env["SHOAL_S3_SECRET_KEY"]!)
    }

    public func store(name: String = "default", secretKey: String? = nil) -> S3Store {
        var c = credentials
        if let secretKey { c.secretKey = secretKey }
        return S3Store(name: name, credentials: c)
    }

    /// A new bucket for one test.
    public func makeBucket(_ hint: String) throws -> String {
        let name = "\(hint)-\(try! secureRandomBytes(4).hexString)".lowercased()
        try store().createBucket(name)
        return name
    }
}

/// A real etcd (Debian's etcd-server) for the whole test process, started with Tools/etcd.sh
/// (authentication on, bound to 127.0.0.1) and stopped when the process exits. Tests run at once:
/// each takes a prefix of its own (`makePrefix`).
public final class EtcdFixture: @unchecked Sendable {
    public let directory: String
    public let endpoint: String
    public let user: String
    public let password: String
    public let envFile: String

    public static let shared: Result<EtcdFixture, FixtureError> = {
        do { return .success(try EtcdFixture()) } catch let e as FixtureError { return .failure(e) } catch {
            return .failure(FixtureError(message: "\(error)"))
        }
    }()

    /// The shared etcd, or a failure that says why it could not start (never a silent skip).
    public static func get() throws -> EtcdFixture { try shared.get() }

    private init() throws {
        // Below the ephemeral range, apart from the object store's ports.
        directory = try ScriptService.start("etcd", what: "etcd", port: 30000 + Int(getpid() % 1000) * 2)
        envFile = directory + "/etcd.env"
        let env = try SettingsFile.readEnvFile(envFile, key: "test")
        endpoint = env["SHOAL_ETCD"]!
        user = env["SHOAL_ETCD_USER"]!
        password = env["SHOAL_ETCD_PASSWORD"]!
    }

    /// A prefix of the cluster's keys for one test (under /shoal/, where the user may write).
    public func makePrefix(_ hint: String) -> String { "/shoal/\(hint)-\(try! secureRandomBytes(4).hexString)/" }

    /// Settings for a worker config, against `endpoint` (default: this etcd).
    public func settings(prefix: String, endpoint: String? = nil, leaseSeconds: Int = 3) -> WorkerConfig.EtcdSettings {
        var s = WorkerConfig.EtcdSettings()
        s.endpoints = [endpoint ?? self.endpoint]
        s.prefix = prefix
        s.leaseSeconds = leaseSeconds
        s.user = user
        s.password = password
        return s
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Runs a command through /bin/sh and returns its exit status and output. (Foundation's
/// Process.waitUntilExit was seen to hang here when the command leaves a daemon behind.)
@discardableResult
public func runProcess(_ path: String, _ args: [String]) -> (Int32, String) {
    let log = makeTemporaryDirectory("cmd") + "/output.log"
    let quoted = ([path] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    let status = system(quoted + " > '\(log)' 2>&1 < /dev/null")
    let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    unlink(log)
    return (status == -1 ? -1 : (status >> 8) & 0xff, output)
}

/// The first port of this host's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range).
public var ephemeralPortStart: UInt16 {
    let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    return text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { UInt16($0) } ?? 32768
}

/// A free port below the ephemeral range, for a worker that is stopped and started again on
/// it: while it is down, a client connecting to a port in the range can reach itself.
public func freePortBelowEphemeralRange() throws -> UInt16 {
    let top = min(ephemeralPortStart, 32768)
    for _ in 0..<200 {
        let candidate = UInt16.random(in: 10000..<max(top, 10001))
        if let (probe, port) = try? TCPSocket.listen(Endpoint(host: "127.0.0.1", port: candidate)) {
            probe.close()
            return port
        }
    }
    throw FixtureError(message: "no free port below \(top) in 200 tries")
}

/// A worker config for tests: data plane on a free port, small buffers and regions.
public func testWorkerConfig(cacheDirectory: String, store: StoreConfig, secret: String = "test-secret-0123456789",
                             capacity: UInt64 = 256 << 20, blockSize: UInt64 = 1 << 20) -> WorkerConfig {
    var c = WorkerConfig()
    c.listen = Endpoint(host: "127.0.0.1", port: 0)
    c.admin = nil
    c.secret = Array(secret.utf8)
    c.blockSize = blockSize
    c.buffers = 8
    // No DRAM tier unless a test asks: tests that damage the disk expect reads to reach it.
    c.memoryTier = 0
    c.metadataTTL = 0
    c.caches = [CacheDiskConfig(path: cacheDirectory, capacity: capacity, regionSize: 8 << 20)]
    c.stores = [store]
    return c
}

extension ObjectStoreFixture {
    public func storeConfig(name: String = "default", secretKey: String? = nil) -> StoreConfig {
        var s = StoreConfig(name: name, kind: .s3)
        s.endpoint = credentials.endpoint
        s.accessKey = credentials.accessKey
        s.secretKey = secretKey ?? credentials.secretKey
        return s
    }
}

/// Flips one byte of a file in place (to simulate corruption on disk).
public func flipByte(path: String, at offset: UInt64) throws {
    let h = try FileHandle.open(path)
    var b: UInt8 = 0
    _ = try h.read(into: &b, count: 1, at: offset)
    b ^= 0xff
    try h.write(&b, count: 1, at: offset)
    try h.sync()
}

/// A throwaway CA, a second unrelated CA, and a worker certificate for 127.0.0.1 (and
/// localhost) signed by the first, made with the `openssl` command.
public struct TestCertificates: Sendable {
    public let directory: String
    public var caFile: String { directory + "/ca.pem" }
    public var otherCAFile: String { directory + "/other-ca.pem" }
    public var certFile: String { directory + "/worker.pem" }
    public var keyFile: String { directory + "/worker.key" }

    public init() throws {
        directory = makeTemporaryDirectory("tls")
        let script = """
            set -e
            cd '\(directory)'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=shoal-test-ca \
                -keyout ca.key -out ca.pem
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=another-ca \
                -keyout other-ca.key -out other-ca.pem
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=shoal-worker -keyout worker.key -out worker.csr
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf
            openssl x509 -req -in worker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out worker.pem
            """
        let (status, output) = runProcess("/bin/bash", ["-c", script])
        guard status == 0 else { throw FixtureError(message: "openssl could not make test certificates (install the openssl package): \(output)") }
    }

    /// Made once for a whole suite.
    public static let shared = Result { try TestCertificates() }
}
