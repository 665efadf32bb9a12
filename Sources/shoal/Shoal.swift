import ArgumentParser
import Logging
import ShoalCore
import ShoalClient
import ShoalSys
import ShoalWorker

@main
struct Shoal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shoal",
        abstract: "A distributed NVMe read cache for AI training data.",
        subcommands: [WorkerCommand.self, CatCommand.self, StatCommand.self, PinCommand.self, UnpinCommand.self, RingCommand.self,
                      DrainCommand.self, UndrainCommand.self, BenchCommand.self, SelftestCommand.self])
}

/// Prints `shoal: error: …` and exits non-zero: the one way commands report failure.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    var line = Array("shoal: error: \(message)\n".utf8)
    _ = line.withUnsafeMutableBytes { StandardStreams.write(fd: 2, $0.baseAddress!, count: $0.count) }
    return ExitCode(code)
}

func note(_ message: String) {
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { StandardStreams.write(fd: 2, $0.baseAddress!, count: $0.count) }
}

func makeLogger(_ label: String, level: String) throws -> Logger {
    guard let lvl = Logger.Level(rawValue: level) else {
        throw fail("--log-level '\(level)' is not one of trace, debug, info, notice, warning, error, critical", code: 2)
    }
    var logger = Logger(label: label, factory: { StreamLogHandler.standardError(label: $0) })
    logger.logLevel = lvl
    return logger
}

/// Options every client command shares: where the workers are and the cluster secret.
struct ClientOptions: ParsableArguments {
    @Option(name: .customLong("worker"), help: "A worker's host:port (repeat for several; default: $SHOAL_WORKERS, comma-separated).")
    var workers: [String] = []

    @Option(help: "The cluster's members file, read again when it changes; replaces --worker (default: $SHOAL_MEMBERS_FILE).")
    var members: String?

    @Flag(help: "Take the --worker list as the whole cluster, instead of asking the workers for the view they route by.")
    var noViewDiscovery = false

    @Option(help: "etcd's host:port, where the cluster's workers register (comma-separated for several); replaces --worker (default: $SHOAL_ETCD).")
    var etcd: String?

    @Option(help: "The cluster's key prefix in etcd (default: $SHOAL_ETCD_PREFIX or /shoal/default/).")
    var etcdPrefix: String?

    @Option(help: "File setting etcd's SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD (default: $SHOAL_ETCD_CREDENTIALS_FILE, or those two variables themselves).")
    var etcdCredentialsFile: String?

    @Option(help: "File holding the cluster secret (default: $SHOAL_SECRET_FILE).")
    var secretFile: String?

    @Option(help: "Connections per worker for parallel block reads.")
    var connections = 8

    @Option(help: "TLS to the workers: the CA file (PEM) their certificates are signed by (default: $SHOAL_TLS_CA_FILE; none: plain TCP).")
    var tlsCa: String?

    func makeClientConfig() throws -> ClientConfig {
        let env = ProcessEnvironment.get
        // What is given on the command line wins over the environment; there, etcd over the
        // members file over a list of workers.
        let explicit = etcd != nil || members != nil || !workers.isEmpty
        let given = { (name: String) -> String? in explicit ? nil : env(name).flatMap { $0.isEmpty ? nil : $0 } }
        let etcdEndpoints = ClientOptions.etcdList(etcd ?? given("SHOAL_ETCD"))
        let membersFile = etcdEndpoints.isEmpty ? members ?? given("SHOAL_MEMBERS_FILE") : nil
        var list = workers
        if list.isEmpty, membersFile == nil, etcdEndpoints.isEmpty, let w = given("SHOAL_WORKERS") { list = w.split(separator: ",").map(String.init) }
        guard !list.isEmpty || membersFile != nil || !etcdEndpoints.isEmpty else {
            throw fail("no worker given: pass --etcd HOST:PORT, --members FILE or --worker HOST:PORT, or set SHOAL_ETCD, SHOAL_MEMBERS_FILE or SHOAL_WORKERS", code: 2)
        }
        var endpoints: [Endpoint] = []
        for w in list {
            guard let e = Endpoint(w.trimmingCharacters()) else { throw fail("worker address '\(w)' is not host:port", code: 2) }
            endpoints.append(e)
        }
        guard let path = secretFile ?? env("SHOAL_SECRET_FILE") else {
            throw fail("no cluster secret: pass --secret-file FILE or set SHOAL_SECRET_FILE", code: 2)
        }
        let secret: [UInt8]
        do { secret = try WorkerConfig.readSecret(path) } catch { throw fail(error.message, code: 2) }
        // A client may share its secret file with a group (training jobs); one anybody can read
        // hands the cluster to every user of this host.
        if let info = FileSystem.info(path), info.permissions & 0o004 != 0 {
            note("shoal: warning: secret file \(path) can be read by every user of this host; run chmod 600 (or 640 for a group) on it")
        }
        guard connections >= 1 && connections <= 64 else { throw fail("--connections must be 1-64", code: 2) }
        var config = ClientConfig(workers: endpoints, secret: secret)
        config.membersFile = membersFile
        config.learnsView = !noViewDiscovery
        config.etcdEndpoints = etcdEndpoints
        config.etcdPrefix = ClientOptions.prefix(etcdPrefix)
        (config.etcdUser, config.etcdPassword) = try ClientOptions.etcdCredentials(etcdCredentialsFile)
        config.connectionsPerWorker = connections
        config.clientName = "shoal-cli"
        if let ca = tlsCa ?? env("SHOAL_TLS_CA_FILE"), !ca.isEmpty { config.tlsCAFile = ca }
        return config
    }

    /// etcd's endpoints from a comma-separated list.
    static func etcdList(_ text: String?) -> [String] {
        (text ?? "").split(separator: ",").map { String($0).trimmingCharacters() }.filter { !$0.isEmpty }
    }

    /// etcd's user and password: from the file given (or $SHOAL_ETCD_CREDENTIALS_FILE), else from
    /// $SHOAL_ETCD_USER and $SHOAL_ETCD_PASSWORD.
    static func etcdCredentials(_ file: String?) throws -> (String?, String?) {
        let env = ProcessEnvironment.get
        if let path = file ?? env("SHOAL_ETCD_CREDENTIALS_FILE").flatMap({ $0.isEmpty ? nil : $0 }) {
            do {
                let values = try WorkerConfig.readEnvFile(path, key: "--etcd-credentials-file")
                guard let user = values["SHOAL_ETCD_USER"], let password = values["SHOAL_ETCD_PASSWORD"] else {
                    throw fail("etcd credentials file \(path) must set SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD", code: 2)
                }
                return (user, password)
            } catch let error as ShoalError {
                throw fail(error.message, code: 2)
            }
        }
        return (env("SHOAL_ETCD_USER"), env("SHOAL_ETCD_PASSWORD"))
    }

    /// The cluster's etcd prefix: given, or $SHOAL_ETCD_PREFIX, or the default.
    static func prefix(_ given: String?) -> String {
        given ?? ProcessEnvironment.get("SHOAL_ETCD_PREFIX").flatMap { $0.isEmpty ? nil : $0 } ?? "/shoal/default/"
    }
}

extension String {
    /// Without leading and trailing spaces, and the characters in `extra`.
    func trimmingCharacters(in extra: String = "") -> String {
        var s = Substring(self)
        let strip: (Character) -> Bool = { $0 == " " || extra.contains($0) }
        while let f = s.first, strip(f) { s = s.dropFirst() }
        while let l = s.last, strip(l) { s = s.dropLast() }
        return String(s)
    }
}

/// Environment variables without Foundation.
enum ProcessEnvironment {
    static func get(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }
}

#if canImport(Glibc)
import Glibc
#endif
