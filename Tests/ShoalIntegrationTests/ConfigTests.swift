#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalCore
import ShoalSys
import ShoalTestSupport
@testable import ShoalWorker

@Suite struct WorkerConfigTests {
    @Test func parsesEveryKey() throws {
        let dir = makeTemporaryDirectory("cfg")
        let c = try WorkerConfig.parse(yaml: """
            listen: 0.0.0.0:7000
            admin: 127.0.0.1:7001
            secret: abcdefghijklmnop-secret
            blockSize: 8MiB
            buffers: 32
            metadataTTL: 5s
            maxConnections: 10
            tls:
              certFile: /etc/shoal/worker.pem
              keyFile: keys/worker.key
            caches:
              - path: \(dir)
                capacity: 1GiB
                regionSize: 64MiB
            stores:
              - name: default
                type: s3
                endpoint: http://127.0.0.1:9000
                accessKey: a
                secretKey: b
              - name: local
                type: file
                root: \(dir)
            rdma:
              device: mlx5_0
              gidAddress: 192.168.7.1
            """, baseDirectory: "/etc/shoal")
        #expect(c.listen == Endpoint(host: "0.0.0.0", port: 7000))
        #expect(c.tls == TLSFiles(certFile: "/etc/shoal/worker.pem", keyFile: "/etc/shoal/keys/worker.key"))
        #expect(c.blockSize == 8 << 20 && c.buffers == 32 && c.metadataTTL == 5 && c.maxConnections == 10)
        #expect(c.caches.first?.capacity == 1 << 30 && c.caches.first?.regionSize == 64 << 20)
        #expect(c.stores.map(\.name) == ["default", "local"])
        #expect(c.rdma == WorkerConfig.RDMASettings(device: "mlx5_0", gidAddress: "192.168.7.1"))
        try c.validate()
    }

    func expectError(_ yaml: String, mentions: String) {
        #expect {
            try WorkerConfig.parse(yaml: yaml).validate()
        } throws: { ($0 as? ShoalError)?.message.contains(mentions) == true }
    }

    @Test func badConfigsNameTheKeyAndTheProblem() {
        expectError("blockSize: huge", mentions: "'blockSize'")
        expectError("colour: red", mentions: "unknown key 'colour'")
        expectError("caches:\n  - path: x\n", mentions: "'caches[0].capacity' is required")
        expectError("caches:\n  - path: x\n    capacity: 1GiB\n    size: 2\n", mentions: "unknown key 'caches[0].size'")
        expectError("stores:\n  - name: a\n    type: ftp\n", mentions: "'stores[0].type'")
        expectError("listen: nowhere", mentions: "'listen'")
        expectError("metadataTTL: soon", mentions: "'metadataTTL'")
        expectError("buffers: 1", mentions: "'buffers'")
        expectError("blockSize: 20MiB\nsecret: x", mentions: "64 KiB-16 MiB")
        expectError("caches: [{path: /x, capacity: 1GiB}]\nstores: [{name: d, type: s3, endpoint: http://h:1, accessKey: a, secretKey: b}]",
                    mentions: "'secret'")
        expectError("tls: {certFile: w.pem}", mentions: "'tls.keyFile' is required")
        expectError("tls: {certFile: w.pem, keyFile: w.key, caFile: ca.pem}", mentions: "unknown key 'tls.caFile'")
        expectError("[1, 2]", mentions: "mapping")
        expectError("rdma: {device: rxe0, simulated: true}", mentions: "unknown key 'rdma.simulated'")
        expectError("secret: x\ncaches: [{path: /x, capacity: 1GiB}]\nstores: [{name: d, type: s3, endpoint: http://h:1, accessKey: a, secretKey: b}]",
                    mentions: "at least 16 random")
        expectError("secret: 0123456789abcdef0123\ncaches: [{path: /x, capacity: 1GiB}]\nstores: [{name: d, type: s3, endpoint: http://h:1, accessKey: a, secretKey: b, stallTimeout: 9s}]",
                    mentions: "shorter than a client's request timeout")
        expectError("a: [", mentions: "YAML")
    }

    @Test func embeddedDefaultIsPrivateAndAReadableSecretIsRefused() throws {
        let base = makeTemporaryDirectory("default") + "/.shoal"
        var cfg = try WorkerConfig.embeddedDefault(base: base)
        #expect(FileSystem.info(base)?.permissions == 0o700)
        #expect(FileSystem.info(base + "/cache")?.permissions == 0o700)
        #expect(FileSystem.info(base + "/store")?.permissions == 0o700)
        #expect(FileSystem.info(base + "/secret")?.permissions == 0o600)
        cfg.listen = Endpoint(host: "127.0.0.1", port: 0)
        cfg.admin = nil
        cfg.blockSize = 1 << 20
        cfg.buffers = 2
        cfg.caches[0].capacity = 64 << 20
        cfg.caches[0].regionSize = 8 << 20
        let worker = try Worker(config: cfg, logger: testLogger)
        worker.stopDataPlane()
        #expect(FileSystem.info(base + "/cache/shoal-cache.dat")?.permissions == 0o600)

        // A secret others can read: refused, naming the file and the fix, on every path to it.
        try FileSystem.setPermissions(base + "/secret", 0o644)
        let names: (Error) -> Bool = {
            guard let m = ($0 as? ShoalError)?.message else { return false }
            return m.contains(base + "/secret") && m.contains("chmod 600")
        }
        #expect(performing: { try WorkerConfig.embeddedDefault(base: base) }, throws: names)
        #expect(performing: { try WorkerConfig.parse(yaml: "secretFile: \(base)/secret") }, throws: names)
        try FileSystem.setPermissions(base + "/secret", 0o600)

        // A base folder others can write: whoever can, could have planted the secret or the cache.
        try FileSystem.setPermissions(base, 0o777)
        #expect(performing: { try WorkerConfig.embeddedDefault(base: base) }, throws: {
            ($0 as? ShoalError)?.message.contains("can be written by others") ?? false
        })
        try FileSystem.setPermissions(base, 0o700)
        _ = try WorkerConfig.embeddedDefault(base: base)
        #expect(try WorkerConfig.parse(yaml: "secretFile: \(base)/secret").secret.count == 64)
    }

    /// A worker run as root (as docs/CONFIG.md suggests, for locked memory) from a folder others
    /// can write to took a `.shoal/secret` another user had put there, mode 600 and all: that
    /// user then knew the cluster secret. A secret owned by anyone else is refused.
    @Test func aSecretOwnedByAnotherUserIsRefused() throws {
        let base = makeTemporaryDirectory("planted") + "/.shoal"
        _ = try WorkerConfig.embeddedDefault(base: base)
        var planted = base + "/secret"
        if FileSystem.effectiveUserID == 0 {
            #expect(chown(planted, 65534, 65534) == 0)
        } else {
            planted = "/"  // owned by root; a user other than root cannot give a file away
        }
        let names: (Error) -> Bool = {
            guard let m = ($0 as? ShoalError)?.message else { return false }
            return m.contains(planted) && m.contains("not by the user running the worker")
        }
        #expect(performing: { try WorkerConfig.parse(yaml: "secretFile: \(planted)") }, throws: names)
        if planted != "/" {
            #expect(performing: { try WorkerConfig.embeddedDefault(base: base) }, throws: names)
        }
    }

    /// `admin: off` as the README writes it, quoted or not (YAML reads a bare `off` as false).
    @Test func adminOffWithOrWithoutQuotes() throws {
        for text in ["admin: off", "admin: \"off\"", "admin: false"] {
            #expect(try WorkerConfig.parse(yaml: text).admin == nil, "\(text)")
        }
        #expect(try WorkerConfig.parse(yaml: "admin: 127.0.0.1:9000").admin == Endpoint(host: "127.0.0.1", port: 9000))
    }

    @Test func aBlockSizeErrorNamesTheConfigFile() throws {
        let file = makeTemporaryDirectory("bs") + "/worker.yaml"
        try FileSystem.writeFile(file, Array("blockSize: 20MiB\nsecret: x\n".utf8))
        #expect(performing: { try WorkerConfig.load(path: file) }, throws: {
            let m = ($0 as? ShoalError)?.message ?? ""
            return m.contains(file) && m.contains("'blockSize'") && m.contains("64 KiB-16 MiB")
        })
    }
}
