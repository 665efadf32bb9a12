import ArgumentParser
import Logging
import ServiceLifecycle
import ShoalCore
import ShoalStore
import ShoalSys
import ShoalWorker

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a cache worker.",
        discussion: """
            Without --config the worker runs on an embedded default: data plane 127.0.0.1:7070, admin 127.0.0.1:7071, \
            a 10 GiB cache in ./.shoal/cache, a file store named 'default' over ./.shoal/store, and a secret generated \
            into ./.shoal/secret. Flags override the file. Every key: docs/CONFIG.md.
            """)

    @Option(help: "YAML config file.") var config: String?
    @Option(help: "Data-plane address, host:port.") var listen: String?
    @Option(help: "Admin HTTP address, host:port, or 'off'.") var admin: String?
    @Option(help: "File holding the cluster secret.") var secretFile: String?
    @Option(help: "TLS on the data plane: the worker's certificate chain (PEM); needs --tls-key.") var tlsCert: String?
    @Option(help: "TLS on the data plane: the worker's private key (PEM); needs --tls-cert.") var tlsKey: String?
    @Option(help: "Block size, e.g. 4MiB.") var blockSize: String?
    @Option(help: "Number of I/O buffers (each one block).") var buffers: Int?
    @Option(help: "How long object metadata is trusted, e.g. 60s; 0 revalidates every open.") var metadataTtl: String?
    @Option(name: .customLong("cache"), help: "A cache folder as PATH:CAPACITY, e.g. /nvme0/shoal:500GiB (repeat; replaces the file's).")
    var caches: [String] = []
    @Option(help: "Region size of new caches, e.g. 256MiB.") var regionSize: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Flag(help: "Benchmark switch: keep filled blocks in the DRAM tier (memoryTier), never touching the cache disks.") var serveFromMemory = false
    @Flag(help: "Benchmark switch: answer READs without their data (clients must opt in).") var answerWithoutData = false
    @Flag(help: "Benchmark switch: serve clients that ask for frames without tags (to measure what the tags cost).") var allowUntaggedFrames = false

    func run() async throws {
        let logger = try makeLogger("shoal.worker", level: logLevel)
        var cfg: WorkerConfig
        do {
            cfg = try config.map { (p) throws(ShoalError) in try WorkerConfig.load(path: p) } ?? (try WorkerConfig.embeddedDefault())
            try applyFlags(&cfg)
            try cfg.validate()
        } catch let e as ShoalError {
            throw fail(e.message, code: 2)
        }
        let worker: Worker
        do { worker = try Worker(config: cfg, logger: logger) } catch { throw fail(error.message) }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: WorkerService(worker: worker)), .init(service: WarmUpService(worker: worker))],
                                 gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do { try await group.run() } catch { throw fail("worker stopped: \(error)") }
    }

    func applyFlags(_ cfg: inout WorkerConfig) throws(ShoalError) {
        if let l = listen {
            guard let e = Endpoint(l) else { throw ShoalError(.badRequest, "--listen '\(l)' is not host:port") }
            cfg.listen = e
        }
        if let a = admin {
            if a == "off" { cfg.admin = nil } else {
                guard let e = Endpoint(a) else { throw ShoalError(.badRequest, "--admin '\(a)' is not host:port or 'off'") }
                cfg.admin = e
            }
        }
        if let f = secretFile {
            do { cfg.secret = try WorkerConfig.readPrivateSecret(f) } catch { throw ShoalError(.badRequest, "--secret-file: \(error.message)") }
        }
        switch (tlsCert, tlsKey) {
        case (let cert?, let key?): cfg.tls = TLSFiles(certFile: cert, keyFile: key)
        case (nil, nil): break
        default: throw ShoalError(.badRequest, "--tls-cert and --tls-key go together: give both for TLS, or neither")
        }
        if let b = blockSize {
            guard let n = ByteSize.parse(b) else { throw ShoalError(.badRequest, "--block-size '\(b)' is not a size (e.g. 4MiB)") }
            cfg.blockSize = n
        }
        if let n = buffers {
            guard n >= 2 else { throw ShoalError(.badRequest, "--buffers must be at least 2") }
            cfg.buffers = n
        }
        if let t = metadataTtl {
            guard let s = DurationText.parseSeconds(t) else { throw ShoalError(.badRequest, "--metadata-ttl '\(t)' is not a duration (e.g. 60s)") }
            cfg.metadataTTL = s
        }
        if serveFromMemory { cfg.serveFromMemory = true }
        if answerWithoutData { cfg.answerWithoutData = true }
        if allowUntaggedFrames { cfg.allowUntaggedFrames = true }
        var region: UInt64?
        if let r = regionSize {
            guard let n = ByteSize.parse(r) else { throw ShoalError(.badRequest, "--region-size '\(r)' is not a size") }
            region = n
            for i in cfg.caches.indices { cfg.caches[i].regionSize = n }
        }
        if !caches.isEmpty {
            cfg.caches = []
            for c in caches {
                guard let colon = c.lastIndex(of: ":"), let cap = ByteSize.parse(String(c[c.index(after: colon)...])) else {
                    throw ShoalError(.badRequest, "--cache '\(c)' is not PATH:CAPACITY (e.g. /nvme0/shoal:500GiB)")
                }
                var disk = CacheDiskConfig(path: String(c[..<colon]), capacity: cap)
                if let region { disk.regionSize = region }
                cfg.caches.append(disk)
            }
        }
    }
}
