import ShoalClient
import ShoalCore
import ShoalObjectStore
import ShoalStore
import ShoalSys
import Yams

/// A capacity-layer store as configured.
public struct StoreConfig: Sendable, Equatable {
    public enum Kind: String, Sendable { case s3, file }
    public var name: String
    public var kind: Kind
    public var endpoint = ""
    public var region = "us-east-1"
    public var accessKey = ""
    public var secretKey = ""
    public var root = ""
    public var maxConcurrency = 16
    /// How long connecting to the store may take, and how long a request may move less than
    /// 1 KiB/s; together well under a client's 10 s request timeout (see `validate`).
    public var connectTimeoutSeconds: Double = 2
    public var stallTimeoutSeconds: Double = 5

    public init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
    }

    /// A client's default request timeout (`ClientConfig.timeoutMillis`), which the store's
    /// limits must stay under.
    public static let clientRequestTimeoutSeconds: Double = 10

    func makeStore() -> any ObjectStore {
        switch kind {
        case .s3:
            S3Store(name: name, credentials: S3Credentials(endpoint: endpoint, region: region, accessKey: accessKey, secretKey: secretKey),
                    maxConcurrency: maxConcurrency, connectTimeoutMillis: Int(connectTimeoutSeconds * 1000),
                    stallTimeoutSeconds: Int(stallTimeoutSeconds.rounded(.up)))
        case .file:
            FileStore(name: name, root: root)
        }
    }
}

/// TLS on the data plane: the worker's certificate chain and private key (PEM files).
public struct TLSFiles: Sendable, Equatable {
    public var certFile: String
    public var keyFile: String

    public init(certFile: String, keyFile: String) {
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// Everything a worker is started with. Every key, its default and unit: docs/CONFIG.md.
public struct WorkerConfig: Sendable {
    public var listen = Endpoint(host: "127.0.0.1", port: 7070)
    public var admin: Endpoint? = Endpoint(host: "127.0.0.1", port: 7071)
    /// Connection count and timeouts of the admin port.
    public var adminLimits = AdminLimits()
    public var secret: [UInt8] = []
    public var blockSize: UInt64 = BlockLayout.defaultBlockSize
    public var buffers = 64
    public var metadataTTL: Double = 60
    /// While a store is unreachable, answer STAT with the last version known (flagged stale).
    public var serveStaleOnOutage = true
    public var maxConnections = 1024
    /// io shards: threads with one io_uring each that serve the connections (0: one per core).
    public var shards = 0
    /// Threads that fill misses from the store and write filled blocks to the cache.
    public var fillThreads = 16
    /// Requests one connection may keep in flight (1-64).
    public var maxInFlight = 32
    /// I/O buffers one connection may hold at once; its other requests wait their turn.
    public var buffersPerConnection = 4
    /// DRAM tier: bytes of hot blocks kept in memory and served without a disk read (0: off).
    public var memoryTier: UInt64 = 512 << 20
    /// A reply that makes no progress this long, while other requests wait for a buffer, closes
    /// its connection (a client that stopped reading its replies).
    public var replyStallTimeout: Double = 5
    /// Send replies with data by io_uring's SENDMSG_ZC: the NIC reads the leased buffers instead
    /// of a copy (on loopback the kernel copies anyway; Perf/ measures both).
    public var sendZeroCopy = false
    /// Ranged GETs at once for one block when few blocks are missing (1: one GET per block).
    public var fillParts = 4
    /// The cluster's members file and this worker's id in it: with them, a READ routed by an
    /// older view to a block this worker neither owns nor falls back for is answered `not_owner`.
    public var membersFile: String?
    public var memberID: String?
    /// etcd, when the cluster's members register there: this worker registers as `memberID`
    /// under `prefix` with a lease it keeps alive, and watches the prefix for the view.
    public var etcd: EtcdSettings?
    /// The data-plane address clients dial, as registered in etcd (default: `listen`, which must
    /// then not be a wildcard address).
    public var advertise: Endpoint?
    /// This worker's share of the slots, as registered in etcd (default: its cache capacity).
    public var weight: Double?
    /// For this long after its view changes, a block this worker now owns and does not hold is
    /// asked of its previous owner before the store (0: never).
    public var handoverSeconds: Double = 600
    /// After a view change, blocks a second this worker hands to their new owners (the ones it
    /// cached most recently first; 0: none, they move only as they are read).
    public var handoverRate: Double = 50
    public var caches: [CacheDiskConfig] = []
    /// Where state that must survive a restart is kept (the pins); default: the first cache folder.
    public var stateDirectory: String?
    public var stores: [StoreConfig] = []
    /// What misses may be written to flash.
    public var admission = AdmissionPolicy.Config()
    /// Cache only a stable subset of any dataset larger than the cache.
    public var thrashGuard = false
    /// Benchmark switches (Perf/ splits each figure into its parts with them; never for service):
    /// keep blocks in DRAM instead of on the cache disks, and answer READs without their data.
    public var serveFromMemory = false
    public var answerWithoutData = false
    /// Benchmark switch: serve clients that ask for frames without tags (Perf/ measures what the
    /// tags cost with it). A relay could then change replies undetected: never for service.
    public var allowUntaggedFrames = false
    /// TLS 1.3 on the data plane (nil: plain TCP, every frame tagged under the session key).
    public var tls: TLSFiles?
    /// RDMA on the data plane (nil: TCP only): the device READ data is RDMA-written from.
    public var rdma: RDMASettings?

    public init() {}

    /// Which RDMA device the worker serves with (docs/CONFIG.md, `rdma`).
    public struct RDMASettings: Sendable, Equatable {
        /// The device: libibverbs' name for it (nil: the first), the IPv4 address whose RoCEv2
        /// GID the queue pairs use (nil: the port's first), or (tests only, never from a config
        /// file) the in-process SIMULATED device.
        public var choice: RDMADeviceChoice
        /// RDMA writes outstanding on the device at once, over all its queue pairs; past it a
        /// write waits for one to complete.
        public var maxTransfers = 4096
        public init(device: String? = nil, gidAddress: String? = nil, maxTransfers: Int = 4096, simulated: Bool = false) {
            choice = RDMADeviceChoice(device: device, gidAddress: gidAddress, simulated: simulated)
            self.maxTransfers = maxTransfers
        }
    }

    public struct EtcdSettings: Sendable {
        public var endpoints: [String] = []
        public var prefix = "/shoal/default/"
        /// A worker that stops renewing leaves the view this long after.
        public var leaseSeconds = 10
        /// etcd's user and password, from `credentialsFile` (SHOAL_ETCD_USER, SHOAL_ETCD_PASSWORD).
        public var user: String?
        public var password: String?
        public init() {}
    }

    /// `stateDirectory`, or the first cache when it is a folder; a cache on a raw device needs
    /// the key.
    public func resolvedStateDirectory() throws(ShoalError) -> String {
        if let stateDirectory { return stateDirectory }
        guard let first = caches.first, !FileSystem.isBlockDevice(first.path) else {
            throw ShoalError(.badRequest, "key 'stateDirectory': the first cache is a raw device, so give a folder for the worker's state (its pins)")
        }
        return first.path
    }

    public static let keys: Set<String> = ["listen", "admin", "secret", "secretFile", "blockSize", "buffers", "metadataTTL", "serveStaleOnOutage",
                                           "maxConnections", "caches", "stores", "admitOnSecondMiss", "writeBudgetDWPD", "thrashGuard",
                                           "serveFromMemory", "answerWithoutData", "adminMaxConnections", "adminRequestTimeout",
                                           "adminIdleTimeout", "allowUntaggedFrames", "tls", "shards", "fillThreads",
                                           "maxInFlight", "buffersPerConnection", "memoryTier", "replyStallTimeout", "sendZeroCopy", "fillParts",
                                           "membersFile", "memberID", "etcd", "advertise", "weight", "handover", "handoverRate",
                                           "stateDirectory", "rdma"]
    static let rdmaKeys: Set<String> = ["device", "gidAddress", "maxTransfers"]
    static let etcdKeys: Set<String> = ["endpoints", "prefix", "leaseSeconds", "credentialsFile"]
    static let tlsKeys: Set<String> = ["certFile", "keyFile"]
    static let cacheKeys: Set<String> = ["path", "capacity", "regionSize", "minFreeSpace", "allowRootFilesystem", "stallTimeout"]
    static let storeKeys: Set<String> = ["name", "type", "endpoint", "region", "accessKey", "secretKey", "credentialsFile",
                                         "root", "maxConcurrency", "connectTimeout", "stallTimeout"]

    /// Loads a YAML file; errors name the file, the key and what is wrong with it.
    public static func load(path: String) throws(ShoalError) -> WorkerConfig {
        let text: String
        do { text = String(decoding: try FileSystem.readFile(path), as: UTF8.self) } catch {
            throw ShoalError(.badRequest, "cannot read config file \(path): \(error)")
        }
        do {
            return try parse(yaml: text, baseDirectory: directory(of: path))
        } catch {
            throw ShoalError(.badRequest, "\(path): \(error.message)")
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return path[..<slash].isEmpty ? "/" : String(path[..<slash])
    }

    /// Parses YAML text; relative paths are resolved against `baseDirectory`.
    public static func parse(yaml: String, baseDirectory: String = ".") throws(ShoalError) -> WorkerConfig {
        let loaded: Any?
        do { loaded = try Yams.load(yaml: yaml) } catch {
            throw ShoalError(.badRequest, "not valid YAML: \(error)")
        }
        var config = WorkerConfig()
        guard let root = loaded else { return config }
        guard let map = root as? [String: Any] else { throw ShoalError(.badRequest, "the top level must be a mapping of keys") }
        let r = KeyReader(map: map, path: "")
        try r.checkKnown(keys)
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : baseDirectory + "/" + p }

        if let v = try r.endpoint("listen") { config.listen = v }
        // YAML reads an unquoted `off` as false: both turn the admin port off.
        if let v = map["admin"] { config.admin = v as? Bool == false || (v as? String) == "off" ? nil : try r.endpoint("admin") }
        if let v = try r.int("adminMaxConnections", min: 1, max: 65536) { config.adminLimits.maxConnections = v }
        if let v = try r.duration("adminRequestTimeout") { config.adminLimits.requestTimeoutSeconds = v }
        if let v = try r.duration("adminIdleTimeout") { config.adminLimits.idleTimeoutSeconds = v }
        if let s = try r.string("secret") { config.secret = Array(s.utf8) }
        if let f = try r.string("secretFile") {
            do { config.secret = try WorkerConfig.readPrivateSecret(resolve(f)) } catch {
                throw ShoalError(.badRequest, "key 'secretFile': \(error.message)")
            }
        }
        if let v = try r.size("blockSize") {
            // Checked here too (not only in validate) so a config file's error names the file.
            config.blockSize = v
            try config.validateBlockSize()
        }
        if let v = try r.int("buffers", min: 2, max: 65536) { config.buffers = v }
        if let v = try r.duration("metadataTTL") { config.metadataTTL = v }
        if let v = try r.bool("serveStaleOnOutage") { config.serveStaleOnOutage = v }
        if let v = try r.int("maxConnections", min: 1, max: 1_000_000) { config.maxConnections = v }
        if let v = try r.int("shards", min: 0, max: 256) { config.shards = v }
        if let v = try r.int("fillThreads", min: 1, max: 1024) { config.fillThreads = v }
        if let v = try r.int("maxInFlight", min: 1, max: Int(WireLimits.maxInFlight)) { config.maxInFlight = v }
        if let v = try r.int("buffersPerConnection", min: 1, max: 65536) { config.buffersPerConnection = v }
        if let v = try r.size("memoryTier") { config.memoryTier = v }
        if let v = try r.duration("replyStallTimeout") { config.replyStallTimeout = v }
        if let v = try r.bool("sendZeroCopy") { config.sendZeroCopy = v }
        if let v = try r.int("fillParts", min: 1, max: 16) { config.fillParts = v }
        if let v = try r.string("membersFile") { config.membersFile = resolve(v) }
        if let v = try r.string("stateDirectory") { config.stateDirectory = resolve(v) }
        if let v = try r.string("memberID") { config.memberID = v }
        if let v = try r.endpoint("advertise") { config.advertise = v }
        if let v = try r.duration("handover") { config.handoverSeconds = v }
        if let v = try r.double("handoverRate", min: 0, max: 1_000_000) { config.handoverRate = v }
        if map["weight"] is String, let v = try r.size("weight") { config.weight = Double(v) } else if let v = try r.double("weight", min: 0, max: 1e18) { config.weight = v }
        if let item = map["etcd"] {
            let e = try r.nested(item, "etcd")
            try e.checkKnown(etcdKeys)
            var settings = EtcdSettings()
            settings.endpoints = try e.list("endpoints").map { "\($0)" }
            guard !settings.endpoints.isEmpty else { throw e.missing("endpoints") }
            if let p = try e.string("prefix") { settings.prefix = p }
            if let t = try e.int("leaseSeconds", min: 2, max: 3600) { settings.leaseSeconds = t }
            if let f = try e.string("credentialsFile") {
                let env = try SettingsFile.readEnvFile(resolve(f), key: "etcd.credentialsFile")
                guard let user = env["SHOAL_ETCD_USER"], let password = env["SHOAL_ETCD_PASSWORD"] else {
                    throw ShoalError(.badRequest, "key 'etcd.credentialsFile': \(f) must set SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD")
                }
                (settings.user, settings.password) = (user, password)
            }
            config.etcd = settings
        }
        if let v = try r.bool("admitOnSecondMiss") { config.admission.admitOnSecondMiss = v }
        if let v = try r.double("writeBudgetDWPD", min: 0.01, max: 1000) { config.admission.writeBudgetDWPD = v }
        if let v = try r.bool("thrashGuard") { config.thrashGuard = v }
        if let v = try r.bool("serveFromMemory") { config.serveFromMemory = v }
        if let v = try r.bool("answerWithoutData") { config.answerWithoutData = v }
        if let v = try r.bool("allowUntaggedFrames") { config.allowUntaggedFrames = v }
        if let item = map["tls"] {
            let t = try r.nested(item, "tls")
            try t.checkKnown(tlsKeys)
            guard let cert = try t.string("certFile") else { throw t.missing("certFile") }
            guard let key = try t.string("keyFile") else { throw t.missing("keyFile") }
            config.tls = TLSFiles(certFile: resolve(cert), keyFile: resolve(key))
        }
        if let item = map["rdma"] {
            let t = try r.nested(item, "rdma")
            try t.checkKnown(rdmaKeys)
            config.rdma = RDMASettings(device: try t.string("device"), gidAddress: try t.string("gidAddress"),
                                       maxTransfers: try t.int("maxTransfers", min: 1, max: 1 << 20) ?? 4096)
        }
        for (i, item) in try r.list("caches").enumerated() {
            let c = try r.nested(item, "caches[\(i)]")
            try c.checkKnown(cacheKeys)
            guard let path = try c.string("path") else { throw c.missing("path") }
            guard let capacity = try c.size("capacity") else { throw c.missing("capacity") }
            var disk = CacheDiskConfig(path: resolve(path), capacity: capacity)
            if let rs = try c.size("regionSize") { disk.regionSize = rs }
            if let f = try c.size("minFreeSpace") { disk.minFreeSpace = f }
            if let a = try c.bool("allowRootFilesystem") { disk.allowRootFilesystem = a }
            if let t = try c.duration("stallTimeout") { disk.stallTimeoutSeconds = t }
            config.caches.append(disk)
        }
        for (i, item) in try r.list("stores").enumerated() {
            let s = try r.nested(item, "stores[\(i)]")
            try s.checkKnown(storeKeys)
            guard let name = try s.string("name") else { throw s.missing("name") }
            let typeText = try s.string("type") ?? "s3"
            guard let kind = StoreConfig.Kind(rawValue: typeText) else {
                throw ShoalError(.badRequest, "key 'stores[\(i)].type': '\(typeText)' is not a store type (s3 or file)")
            }
            var store = StoreConfig(name: name, kind: kind)
            store.endpoint = try s.string("endpoint") ?? ""
            store.region = try s.string("region") ?? "us-east-1"
            store.accessKey = try s.string("accessKey") ?? ""
            store.secretKey = try s.string("secretKey") ?? ""
            if let f = try s.string("credentialsFile") {
                let env = try SettingsFile.readEnvFile(resolve(f), key: "stores[\(i)].credentialsFile")
                store.accessKey = env["SHOAL_S3_ACCESS_KEY"] ?? env["AWS_ACCESS_KEY_ID"] ?? store.accessKey
                store.secretKey = env["SHOAL_S3_SECRET_KEY"] ?? env["AWS_SECRET_ACCESS_KEY"] ?? store.secretKey
                if store.endpoint.isEmpty { store.endpoint = env["SHOAL_S3_ENDPOINT"] ?? "" }
                if let region = env["SHOAL_S3_REGION"] { store.region = region }
            }
            if let root = try s.string("root") { store.root = resolve(root) }
            if let n = try s.int("maxConcurrency", min: 1, max: 1024) { store.maxConcurrency = n }
            if let t = try s.duration("connectTimeout") { store.connectTimeoutSeconds = t }
            if let t = try s.duration("stallTimeout") { store.stallTimeoutSeconds = t }
            config.stores.append(store)
        }
        return config
    }

    /// The shortest secret a worker accepts.
    public static let minimumSecretBytes = 16

    /// Checks the whole config; the error names the key.
    public func validate() throws(ShoalError) {
        try validateBlockSize()
        guard membersFile == nil || etcd == nil else {
            throw ShoalError(.badRequest, "keys 'membersFile' and 'etcd': give one source of the cluster's view, not both")
        }
        guard (membersFile == nil && etcd == nil) == (memberID == nil) else {
            throw ShoalError(.badRequest, "keys 'membersFile' (or 'etcd') and 'memberID' go together: one lists the cluster, the id says which member this worker is")
        }
        if let id = memberID {
            guard !id.isEmpty, id.utf8.count <= 128, !id.contains("/"), id.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
                throw ShoalError(.badRequest, "key 'memberID': '\(id)' must be 1-128 printable ASCII characters without '/' or spaces")
            }
        }
        if let etcd {
            do { _ = try EtcdClient(endpoints: etcd.endpoints) } catch { throw ShoalError(.badRequest, "key 'etcd.endpoints': \(error.message)") }
            guard etcd.prefix.hasPrefix("/") else { throw ShoalError(.badRequest, "key 'etcd.prefix': '\(etcd.prefix)' must start with '/' (e.g. /shoal/default/)") }
            if advertise == nil, listen.host == "0.0.0.0" || listen.host == "::" || listen.host.isEmpty {
                throw ShoalError(.badRequest, "key 'advertise': needed with 'etcd' when 'listen' is \(listen) (a wildcard): the address clients dial, e.g. 10.0.0.5:7070")
            }
        }
        guard !secret.isEmpty else {
            throw ShoalError(.badRequest, "key 'secret': a shared secret is required (set 'secret' or 'secretFile'); clients prove they hold it")
        }
        // Anyone who sends a HELLO gets a proof made with the secret, so a short one can be
        // guessed offline; 16 bytes of randomness (32 hex digits make 16) cannot.
        guard secret.count >= WorkerConfig.minimumSecretBytes else {
            throw ShoalError(.badRequest, "key 'secret'/'secretFile': the secret is \(secret.count) bytes; use at least \(WorkerConfig.minimumSecretBytes) random ones "
                             + "(e.g. head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'), since anyone who reaches the port can test guesses offline")
        }
        guard adminLimits.requestTimeoutSeconds > 0, adminLimits.idleTimeoutSeconds > 0 else {
            throw ShoalError(.badRequest, "key 'adminRequestTimeout'/'adminIdleTimeout': must be more than 0 (e.g. 10s, 5s)")
        }
        guard !caches.isEmpty else { throw ShoalError(.badRequest, "key 'caches': at least one cache folder is required") }
        guard !stores.isEmpty else { throw ShoalError(.badRequest, "key 'stores': at least one store is required") }
        var names = Set<String>()
        for (i, s) in stores.enumerated() {
            guard names.insert(s.name).inserted else { throw ShoalError(.badRequest, "key 'stores[\(i)].name': '\(s.name)' is used twice") }
            guard !s.name.isEmpty, s.name.utf8.count <= WireLimits.maxStoreName, !s.name.contains("@") else {
                throw ShoalError(.badRequest, "key 'stores[\(i)].name': '\(s.name)' must be 1-\(WireLimits.maxStoreName) bytes without '@'")
            }
            switch s.kind {
            case .s3:
                guard s.endpoint.hasPrefix("http://") || s.endpoint.hasPrefix("https://") else {
                    throw ShoalError(.badRequest, "key 'stores[\(i)].endpoint': '\(s.endpoint)' must be an http:// or https:// URL")
                }
                guard s.connectTimeoutSeconds >= 0.001, s.stallTimeoutSeconds >= 1 else {
                    throw ShoalError(.badRequest, "key 'stores[\(i)].stallTimeout': connectTimeout must be at least 1ms and stallTimeout at least 1s")
                }
                guard s.connectTimeoutSeconds + s.stallTimeoutSeconds < StoreConfig.clientRequestTimeoutSeconds else {
                    throw ShoalError(.badRequest, "key 'stores[\(i)].stallTimeout': connectTimeout + stallTimeout (\(formatFixed(s.connectTimeoutSeconds + s.stallTimeoutSeconds, decimals: 1)) s) "
                                     + "must be shorter than a client's request timeout (\(formatFixed(StoreConfig.clientRequestTimeoutSeconds, decimals: 0)) s), "
                                     + "or clients give up on this worker before it can say the store is slow; lower them")
                }
                guard !s.accessKey.isEmpty, !s.secretKey.isEmpty else {
                    throw ShoalError(.badRequest, "key 'stores[\(i)].accessKey': store '\(s.name)' needs accessKey and secretKey (or credentialsFile)")
                }
            case .file:
                guard FileSystem.isDirectory(s.root) else {
                    throw ShoalError(.badRequest, "key 'stores[\(i)].root': '\(s.root)' is not a folder")
                }
            }
        }
        for (i, c) in caches.enumerated() where c.capacity < CacheFormatInfo.dataStart + 2 * c.regionSize {
            throw ShoalError(.badRequest, "key 'caches[\(i)].capacity': \(ByteSize.format(c.capacity)) must hold the \(ByteSize.format(CacheFormatInfo.dataStart)) superblock area and at least two regions of \(ByteSize.format(c.regionSize))")
        }
    }

    func validateBlockSize() throws(ShoalError) {
        guard blockSize >= BlockLayout.minBlockSize, blockSize <= BlockLayout.maxBlockSize, blockSize % 4096 == 0 else {
            throw ShoalError(.badRequest, "key 'blockSize': \(ByteSize.format(blockSize)) must be 64 KiB-16 MiB and a multiple of 4 KiB")
        }
    }


    /// Reads the worker's secret file, refusing one that group or others can read: whoever reads
    /// the secret can pass the handshake and the admin port's token check.
    public static func readPrivateSecret(_ path: String) throws(ShoalError) -> [UInt8] {
        // Its owner can read it and replace it, whatever its mode: a worker run as root from a
        // shared folder would otherwise take a secret another user planted there (./.shoal/secret).
        let info = FileSystem.info(path)
        if let info, info.owner != FileSystem.effectiveUserID {
            throw ShoalError(.badRequest, "secret file \(path) is owned by user \(info.owner), not by the user running the worker (\(FileSystem.effectiveUserID)): "
                             + "its owner knows the cluster secret; create it as the worker's user (or chown it) and keep it chmod 600")
        }
        if let info, info.permissions & 0o044 != 0 {
            throw ShoalError(.badRequest, "secret file \(path) can be read by group or others (mode \(String(info.permissions, radix: 8))); "
                             + "the cluster secret must be private: run chmod 600 \(path)")
        }
        return try SettingsFile.readSecret(path)
    }

    /// The embedded default under `base` (`./.shoal` for `shoal worker` without `--config`): a
    /// 10 GiB cache in `base/cache`, a file store over `base/store`, and a secret generated into
    /// `base/secret` on first start. Folders it creates are private (0700), the secret 0600.
    public static func embeddedDefault(base: String = ".shoal") throws(ShoalError) -> WorkerConfig {
        var cfg = WorkerConfig()
        let secretPath = base + "/secret"
        // Whoever owns or can write the base folder controls the secret, the cache and the store
        // folder: another user who made ./.shoal first must not get them.
        if let info = FileSystem.info(base) {
            guard info.owner == FileSystem.effectiveUserID, info.permissions & 0o022 == 0 else {
                throw ShoalError(.badRequest, "\(base) belongs to user \(info.owner) or can be written by others (mode \(String(info.permissions, radix: 8))); "
                                 + "the embedded default keeps the secret and the cache there: remove it, or run from a folder of your own")
            }
        }
        do {
            try FileSystem.createDirectories(base, permissions: 0o700)
            try FileSystem.createDirectories(base + "/cache", permissions: 0o700)
            try FileSystem.createDirectories(base + "/store", permissions: 0o700)
            if !FileSystem.exists(secretPath) {
                try FileSystem.writeFile(secretPath, Array(try secureRandomBytes(32).hexString.utf8), permissions: 0o600)
            }
        } catch {
            throw ShoalError(.badRequest, "cannot set up the embedded default under \(base): \(error)")
        }
        cfg.secret = try readPrivateSecret(secretPath)
        cfg.caches = [CacheDiskConfig(path: base + "/cache", capacity: 10 << 30)]
        var store = StoreConfig(name: "default", kind: .file)
        store.root = base + "/store"
        cfg.stores = [store]
        return cfg
    }
}

extension WorkerConfig {
    /// Lets members files be YAML in this process (`MembersFile.yamlLoader`): the worker and the
    /// command line carry Yams; libshoal does not.
    public static func installYAMLMembers() {
        MembersFile.yamlLoader = { text in try Yams.load(yaml: text) }
    }
}

/// Typed reads of one YAML mapping, with errors that name the key.
struct KeyReader {
    let map: [String: Any]
    let path: String

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func missing(_ key: String) -> ShoalError { ShoalError(.badRequest, "key '\(name(key))' is required") }

    func checkKnown(_ known: Set<String>) throws(ShoalError) {
        for key in map.keys.sorted() where !known.contains(key) {
            throw ShoalError(.badRequest, "unknown key '\(name(key))' (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func string(_ key: String) throws(ShoalError) -> String? {
        guard let v = map[key] else { return nil }
        if let s = v as? String { return s }
        if let i = v as? Int { return String(i) }
        throw ShoalError(.badRequest, "key '\(name(key))': expected text, got \(v)")
    }

    func double(_ key: String, min lo: Double, max hi: Double) throws(ShoalError) -> Double? {
        guard let v = map[key] else { return nil }
        let d: Double
        if let x = v as? Double { d = x } else if let i = v as? Int { d = Double(i) } else {
            throw ShoalError(.badRequest, "key '\(name(key))': expected a number, got \(v)")
        }
        guard d >= lo, d <= hi else { throw ShoalError(.badRequest, "key '\(name(key))': \(d) is outside \(lo)-\(hi)") }
        return d
    }

    func bool(_ key: String) throws(ShoalError) -> Bool? {
        guard let v = map[key] else { return nil }
        guard let b = v as? Bool else { throw ShoalError(.badRequest, "key '\(name(key))': expected true or false, got \(v)") }
        return b
    }

    func int(_ key: String, min lo: Int, max hi: Int) throws(ShoalError) -> Int? {
        guard let v = map[key] else { return nil }
        guard let i = v as? Int else { throw ShoalError(.badRequest, "key '\(name(key))': expected a whole number, got \(v)") }
        guard i >= lo, i <= hi else { throw ShoalError(.badRequest, "key '\(name(key))': \(i) is outside \(lo)-\(hi)") }
        return i
    }

    func size(_ key: String) throws(ShoalError) -> UInt64? {
        guard let v = map[key] else { return nil }
        if let i = v as? Int, i >= 0 { return UInt64(i) }
        guard let s = v as? String, let n = ByteSize.parse(s) else {
            throw ShoalError(.badRequest, "key '\(name(key))': '\(v)' is not a size (e.g. 4MiB, 100GiB)")
        }
        return n
    }

    func duration(_ key: String) throws(ShoalError) -> Double? {
        guard let v = map[key] else { return nil }
        if let i = v as? Int, i >= 0 { return Double(i) }
        guard let s = v as? String, let d = DurationText.parseSeconds(s) else {
            throw ShoalError(.badRequest, "key '\(name(key))': '\(v)' is not a duration (e.g. 60s, 500ms, 0)")
        }
        return d
    }

    func endpoint(_ key: String) throws(ShoalError) -> Endpoint? {
        guard let s = try string(key) else { return nil }
        guard let e = Endpoint(s) else { throw ShoalError(.badRequest, "key '\(name(key))': '\(s)' is not host:port") }
        return e
    }

    func list(_ key: String) throws(ShoalError) -> [Any] {
        guard let v = map[key] else { return [] }
        guard let l = v as? [Any] else { throw ShoalError(.badRequest, "key '\(name(key))': expected a list") }
        return l
    }

    func nested(_ item: Any, _ path: String) throws(ShoalError) -> KeyReader {
        guard let m = item as? [String: Any] else { throw ShoalError(.badRequest, "key '\(path)': expected a mapping of keys") }
        return KeyReader(map: m, path: path)
    }
}
