#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys
import ShoalTransport

/// The files a client's and a worker's settings point at: the cluster secret and `KEY=VALUE`
/// files (credentials).
public enum SettingsFile {
    /// The cluster secret in `path`, without trailing newlines and spaces.
    public static func readSecret(_ path: String) throws(ShoalError) -> [UInt8] {
        do {
            var bytes = try FileSystem.readFile(path)
            while let l = bytes.last, l == 10 || l == 13 || l == 32 { bytes.removeLast() }
            guard !bytes.isEmpty else { throw ShoalError(.badRequest, "secret file \(path) is empty") }
            return bytes
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.badRequest, "cannot read secret file \(path): \(error)")
        }
    }

    /// `KEY=VALUE` lines (`#` starts a comment line); `key` names the setting that gave the path.
    public static func readEnvFile(_ path: String, key: String) throws(ShoalError) -> [String: String] {
        let text: String
        do { text = String(decoding: try FileSystem.readFile(path), as: UTF8.self) } catch {
            throw ShoalError(.badRequest, "key '\(key)': cannot read \(path): \(error)")
        }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            out[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return out
    }
}

/// A client's settings by name, as every front end takes them: the command line's options,
/// libshoal's `key=value` configuration and the Python package's keyword arguments. A setting
/// not given falls back to its environment variable (`SHOAL_…`, as the command line documents);
/// the membership variables only when no membership setting is given at all.
///
/// | key | environment | what |
/// |---|---|---|
/// | `workers` | `SHOAL_WORKERS` | worker addresses, `host:port`, comma-separated |
/// | `members_file` | `SHOAL_MEMBERS_FILE` | the members file |
/// | `etcd` | `SHOAL_ETCD` | etcd endpoints, comma-separated |
/// | `etcd_prefix` | `SHOAL_ETCD_PREFIX` | the cluster's prefix (default `/shoal/default/`) |
/// | `etcd_credentials_file` | `SHOAL_ETCD_CREDENTIALS_FILE` | sets `SHOAL_ETCD_USER`, `SHOAL_ETCD_PASSWORD` |
/// | `secret_file` | `SHOAL_SECRET_FILE` | the cluster secret |
/// | `tls_ca_file` | `SHOAL_TLS_CA_FILE` | TLS to the workers, checked against this CA |
/// | `view_discovery` | | `true` (default): learn the view from the workers given |
/// | `connections` | | connections per worker, 1-64 (default 8) |
/// | `timeout_ms`, `connect_timeout_ms` | | per worker, default 10000 and 1000 |
/// | `hedge_after_ms` | | hedged reads after this long (default off) |
/// | `client_name` | | shown in the workers' logs |
/// | `rdma` | `SHOAL_RDMA` | an RDMA device's name, or `auto` (the first): READ data by RDMA where the worker has it (default off) |
/// | `rdma_gid_address` | `SHOAL_RDMA_GID_ADDRESS` | the IPv4 address whose RoCEv2 GID to use (default: the port's first) |
public enum ClientSettings {
    public static let keys: Set<String> = [
        "workers", "members_file", "etcd", "etcd_prefix", "etcd_credentials_file", "secret_file", "tls_ca_file",
        "view_discovery", "connections", "timeout_ms", "connect_timeout_ms", "hedge_after_ms", "client_name",
        "rdma", "rdma_gid_address",
    ]

    /// The configuration `settings` describe (environment variables filling what they leave
    /// out, read through `environment`); the error names the key and what is wrong with it.
    /// `warn` hears what is allowed but unwise (a secret file every user can read).
    public static func config(_ settings: [String: String], environment: (String) -> String? = ClientSettings.processEnvironment,
                              warn: (String) -> Void = { _ in }) throws(ShoalError) -> ClientConfig {
        for key in settings.keys.sorted() where !keys.contains(key) {
            throw ShoalError(.badRequest, "unknown setting '\(key)' (known: \(keys.sorted().joined(separator: ", ")))")
        }
        func env(_ name: String) -> String? { environment(name).flatMap { $0.isEmpty ? nil : $0 } }
        func value(_ key: String) -> String? { settings[key].flatMap { $0.isEmpty ? nil : $0 } }
        let m = try membership(settings, environment: environment)
        guard !m.workers.isEmpty || m.membersFile != nil || !m.etcd.isEmpty else {
            throw ShoalError(.badRequest, "no worker given: set 'etcd' (host:port), 'members_file' or 'workers' (host:port), or SHOAL_ETCD, SHOAL_MEMBERS_FILE or SHOAL_WORKERS")
        }
        var endpoints: [Endpoint] = []
        for w in m.workers {
            guard let e = Endpoint(w) else { throw ShoalError(.badRequest, "setting 'workers': '\(w)' is not host:port") }
            endpoints.append(e)
        }
        guard let path = value("secret_file") ?? env("SHOAL_SECRET_FILE") else {
            throw ShoalError(.badRequest, "no cluster secret: set 'secret_file' or SHOAL_SECRET_FILE")
        }
        let secret = try SettingsFile.readSecret(path)
        // A client may share its secret file with a group (training jobs); one anybody can read
        // hands the cluster to every user of this host.
        if let info = FileSystem.info(path), info.permissions & 0o004 != 0 {
            warn("secret file \(path) can be read by every user of this host; run chmod 600 (or 640 for a group) on it")
        }
        var config = ClientConfig(workers: endpoints, secret: secret)
        config.membersFile = m.membersFile
        config.etcdEndpoints = m.etcd
        config.etcdPrefix = m.etcdPrefix
        (config.etcdUser, config.etcdPassword) = (m.etcdUser, m.etcdPassword)
        if let ca = value("tls_ca_file") ?? env("SHOAL_TLS_CA_FILE") { config.tlsCAFile = ca }
        if let v = value("view_discovery") {
            switch v.lowercased() {
            case "true", "1", "yes": config.learnsView = true
            case "false", "0", "no": config.learnsView = false
            default: throw ShoalError(.badRequest, "setting 'view_discovery' is '\(v)'; it must be true or false")
            }
        }
        config.connectionsPerWorker = try integer(settings, "connections", 1...64) ?? config.connectionsPerWorker
        config.timeoutMillis = Int32(try integer(settings, "timeout_ms", 1...3_600_000) ?? Int(config.timeoutMillis))
        config.connectTimeoutMillis = Int32(try integer(settings, "connect_timeout_ms", 1...3_600_000) ?? Int(config.connectTimeoutMillis))
        if let h = try integer(settings, "hedge_after_ms", 1...3_600_000) { config.hedgeAfterMillis = Int32(h) }
        if let name = value("client_name") {
            guard name.utf8.count <= WireLimits.maxClientName else {
                throw ShoalError(.badRequest, "setting 'client_name' is longer than \(WireLimits.maxClientName) bytes")
            }
            config.clientName = name
        }
        if let device = value("rdma") ?? env("SHOAL_RDMA"), !["off", "false", "0", "no"].contains(device.lowercased()) {
            let gid = value("rdma_gid_address") ?? env("SHOAL_RDMA_GID_ADDRESS")
            let parts = gid?.split(separator: ".", omittingEmptySubsequences: false) ?? []
            if let gid, parts.count != 4 || parts.contains(where: { UInt8($0) == nil }) {
                throw ShoalError(.badRequest, "setting 'rdma_gid_address' is '\(gid)', not an IPv4 address")
            }
            config.rdma = ClientRDMASettings(device: device.lowercased() == "auto" ? nil : device, gidAddress: gid)
        }
        return config
    }

    /// Where a cluster's view comes from, as the settings give it.
    public struct Membership: Sendable {
        /// etcd's endpoints (none: not etcd), its user and password, and the cluster's prefix.
        public var etcd: [String]
        public var etcdUser: String?
        public var etcdPassword: String?
        public var etcdPrefix: String
        /// The members file, when not etcd.
        public var membersFile: String?
        /// Worker addresses, when neither.
        public var workers: [String]
    }

    /// The membership part of `config` alone (no secret needed: `shoal drain` uses it). What is
    /// given wins over the environment; there, etcd over the members file over a list of workers.
    public static func membership(_ settings: [String: String],
                                  environment: (String) -> String? = ClientSettings.processEnvironment) throws(ShoalError) -> Membership {
        func env(_ name: String) -> String? { environment(name).flatMap { $0.isEmpty ? nil : $0 } }
        func value(_ key: String) -> String? { settings[key].flatMap { $0.isEmpty ? nil : $0 } }
        let explicit = value("etcd") != nil || value("members_file") != nil || value("workers") != nil
        func given(_ name: String) -> String? { explicit ? nil : env(name) }
        let etcd = list(value("etcd") ?? given("SHOAL_ETCD"))
        let membersFile = etcd.isEmpty ? value("members_file") ?? given("SHOAL_MEMBERS_FILE") : nil
        let workers = membersFile == nil && etcd.isEmpty ? list(value("workers") ?? given("SHOAL_WORKERS")) : []
        var user = env("SHOAL_ETCD_USER")
        var password = env("SHOAL_ETCD_PASSWORD")
        if let file = value("etcd_credentials_file") ?? env("SHOAL_ETCD_CREDENTIALS_FILE") {
            let values = try SettingsFile.readEnvFile(file, key: "etcd_credentials_file")
            guard let u = values["SHOAL_ETCD_USER"], let p = values["SHOAL_ETCD_PASSWORD"] else {
                throw ShoalError(.badRequest, "etcd credentials file \(file) must set SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD")
            }
            (user, password) = (u, p)
        }
        return Membership(etcd: etcd, etcdUser: user, etcdPassword: password,
                          etcdPrefix: value("etcd_prefix") ?? env("SHOAL_ETCD_PREFIX") ?? "/shoal/default/",
                          membersFile: membersFile, workers: workers)
    }

    /// Parses `key=value` lines, or `;`-separated pairs on one line: libshoal's configuration
    /// text. (A value holding `;` needs the lines form.)
    public static func parse(_ text: String) throws(ShoalError) -> [String: String] {
        var out: [String: String] = [:]
        let lines = text.contains("\n")
        for raw in text.split(whereSeparator: { $0 == "\n" || (!lines && $0 == ";") }) {
            let line = trim(String(raw))
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ShoalError(.badRequest, "configuration line '\(line)' is not key=value")
            }
            let key = trim(String(line[..<eq]))
            guard out[key] == nil else { throw ShoalError(.badRequest, "setting '\(key)' is given twice") }
            out[key] = trim(String(line[line.index(after: eq)...]))
        }
        return out
    }

    public static func processEnvironment(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: v, count: strlen(v)), as: UTF8.self)
    }

    static func list(_ text: String?) -> [String] {
        (text ?? "").split(separator: ",").map { trim(String($0)) }.filter { !$0.isEmpty }
    }

    static func trim(_ s: String) -> String {
        var t = Substring(s)
        while let f = t.first, f == " " || f == "\t" || f == "\r" { t = t.dropFirst() }
        while let l = t.last, l == " " || l == "\t" || l == "\r" { t = t.dropLast() }
        return String(t)
    }

    static func integer(_ settings: [String: String], _ key: String, _ range: ClosedRange<Int>) throws(ShoalError) -> Int? {
        guard let text = settings[key], !text.isEmpty else { return nil }
        guard let n = Int(text), range.contains(n) else {
            throw ShoalError(.badRequest, "setting '\(key)' is '\(text)'; it must be a whole number \(range.lowerBound)-\(range.upperBound)")
        }
        return n
    }
}
