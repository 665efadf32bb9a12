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
        subcommands: [WorkerCommand.self, CatCommand.self, StatCommand.self, LsCommand.self, WarmCommand.self, StatsCommand.self, HotCommand.self, PinCommand.self, UnpinCommand.self, EvictCommand.self, RingCommand.self,
                      DrainCommand.self, UndrainCommand.self, BenchCommand.self, SelftestCommand.self])

    /// ArgumentParser's own `main`, after letting members files be YAML in this process.
    static func main() async {
        WorkerConfig.installYAMLMembers()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
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

    @Option(help: "READ data by RDMA through this device (its libibverbs name, or 'auto' for the first) from workers that serve RDMA; TCP for the others and after any RDMA failure (default: $SHOAL_RDMA; none: TCP only).")
    var rdma: String?

    @Option(help: "With --rdma: the IPv4 address whose RoCEv2 GID to use (default: $SHOAL_RDMA_GID_ADDRESS, else the port's first).")
    var rdmaGidAddress: String?

    func makeClientConfig() throws -> ClientConfig {
        var settings: [String: String] = ["client_name": "shoal-cli", "connections": String(connections)]
        if !workers.isEmpty { settings["workers"] = workers.joined(separator: ",") }
        settings["members_file"] = members
        settings["etcd"] = etcd
        settings["etcd_prefix"] = etcdPrefix
        settings["etcd_credentials_file"] = etcdCredentialsFile
        settings["secret_file"] = secretFile
        settings["tls_ca_file"] = tlsCa
        settings["rdma"] = rdma
        settings["rdma_gid_address"] = rdmaGidAddress
        if noViewDiscovery { settings["view_discovery"] = "false" }
        do {
            return try ClientSettings.config(settings, warn: { note("shoal: warning: \($0)") })
        } catch {
            // The settings' names are the command line's options here.
            throw fail(error.message.replacingSettingNames(), code: 2)
        }
    }
}

extension String {
    /// A settings error as the command line says it: 'etcd' is --etcd, and so on.
    func replacingSettingNames() -> String {
        var s = self
        for (key, option) in [("'workers'", "--worker"), ("'members_file'", "--members"), ("'etcd_prefix'", "--etcd-prefix"),
                              ("'etcd_credentials_file'", "--etcd-credentials-file"), ("'etcd'", "--etcd"), ("'secret_file'", "--secret-file"),
                              ("'tls_ca_file'", "--tls-ca"), ("'connections'", "--connections"),
                              ("'rdma_gid_address'", "--rdma-gid-address")] {
            s = s.replacing(key, with: option)
        }
        return s
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

#if canImport(Glibc)
import Glibc
#endif
