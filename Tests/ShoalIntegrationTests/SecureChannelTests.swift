import Foundation
import Logging
import Testing
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTestSupport
import ShoalTransport
@testable import ShoalWorker

/// A man in the middle on loopback, without the cluster secret: it forwards every frame both
/// ways and, depending on `attack`, changes READ data (recomputing its CRC32C, which anyone can)
/// or slips a request of its own into the client's session.
final class Relay: @unchecked Sendable {
    enum Attack { case none, flipReadData, injectRequest }

    let port: UInt16
    private let listener: TCPSocket
    private let attack: Attack
    private let lock = ConditionLock()
    private var _altered = 0
    private var _injected = 0
    var altered: Int { lock.withLock { _altered } }
    var injected: Int { lock.withLock { _injected } }
    var endpoint: Endpoint { Endpoint(host: "127.0.0.1", port: port) }

    /// Frames carry a tag the relay must leave out of the data it changes (`tagged`).
    private let tagSize: Int

    init(to target: Endpoint, attack: Attack, tagged: Bool = true) throws {
        (listener, port) = try TCPSocket.listen(Endpoint(host: "127.0.0.1", port: 0))
        self.attack = attack
        tagSize = tagged ? FrameTag.size : 0
        try OSThread.spawn(name: "relay") { [self] in
            while let client = try? listener.accept() {
                guard let upstream = try? TCPSocket.connect(target, timeoutMillis: 2000) else { client.close(); continue }
                try? OSThread.spawn(name: "relay-up") { self.pump(from: client, to: upstream, towardWorker: true) }
                try? OSThread.spawn(name: "relay-down") { self.pump(from: upstream, to: client, towardWorker: false) }
            }
        }
    }

    deinit { listener.shutdown() }

    private func pump(from: TCPSocket, to: TCPSocket, towardWorker: Bool) {
        defer { from.shutdown(); to.shutdown() }
        var frames = 0
        while true {
            guard let head = try? from.receive(count: FrameHeader.size) else { return }
            let length = head.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: UInt32.self))) }
            guard var payload = try? from.receive(count: length) else { return }
            // After HELLO and AUTH, before the client's first request: a STAT of its own, with a
            // made-up tag (it has no key to make a real one).
            if towardWorker && attack == .injectRequest && frames == 2 {
                let stat = StatRequest(object: ObjectRef(store: "default", bucket: "relay", key: "its-own")).encoded
                    + [UInt8](repeating: 0xAB, count: FrameTag.size)
                lock.withLock { _injected += 1 }
                _ = try? to.send(FrameHeader(type: .stat, requestID: 999, payloadLength: UInt32(stat.count)).bytes + stat)
            }
            // A READ reply: data, crc u32, tag [16]. Flip a data byte and make the CRC match again.
            if !towardWorker && attack == .flipReadData && head[5] == FrameType.readReply.rawValue && head[6] == 0
                && payload.count > 4 + tagSize {
                lock.withLock { _altered += 1 }
                payload[0] ^= 0x01
                let end = payload.count - tagSize - 4
                let crc = payload.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
                withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { payload[end + i] = $0[i] } }
            }
            guard (try? to.send(head + payload)) != nil else { return }
            frames += 1
        }
    }
}

/// A `file` store over a fresh folder, for tests that never read.
func fileStore() -> StoreConfig {
    var s = StoreConfig(name: "default", kind: .file)
    s.root = makeTemporaryDirectory("root")
    return s
}

@Suite(.serialized) struct SecureChannelTests {
    /// The defect: a relay rewrote READ data with a recomputed CRC32C and the client took it.
    @Test func aRelayThatRewritesReadDataWithAMatchingCRCIsDetected() throws {
        let h = try Harness("relay-flip")
        let data = SampleData.bytes(seed: 21, count: 3 << 20)
        try h.put("o", data)
        var config = ClientConfig(workers: [], secret: Array(h.secret.utf8))
        config.connectionsPerWorker = 1

        // An honest relay changes nothing: the reads below fail because of the change alone.
        let honest = try Relay(to: h.endpoint, attack: .none)
        config.workers = [honest.endpoint]
        let plain = try ShoalClient(config: config)
        #expect(try plain.read(try plain.open(h.ref("o")), offset: 0, length: data.count) == data)

        let relay = try Relay(to: h.endpoint, attack: .flipReadData)
        config.workers = [relay.endpoint]
        let client = try ShoalClient(config: config)
        let file = try client.open(h.ref("o"))
        var buffer = [UInt8](repeating: 0, count: data.count)
        #expect {
            _ = try buffer.withUnsafeMutableBytes { try client.read(file, at: 0, into: $0) }
        } throws: { error in
            let e = error as? ShoalError
            return e?.code == .tampered
                && e!.message.contains("reply from worker \(relay.endpoint) failed authentication (tampered or corrupted in transit)")
        }
        #expect(relay.altered >= 1)
        #expect(!buffer.contains { $0 != 0 }, "the altered bytes were handed back")
    }

    /// The attack above is real: with the tags switched off (the benchmark switch on both sides,
    /// which is what v1 was) the same relay's change passes the CRC32C check unnoticed.
    @Test func withoutTagsTheSameRelayGoesUnnoticed() throws {
        let h = try Harness("relay-untagged")
        let data = SampleData.bytes(seed: 24, count: 1 << 20)
        try h.put("o", data)
        var switched = h.worker.config
        switched.allowUntaggedFrames = true
        h.worker.stopDataPlane()
        h.worker = try Worker(config: switched, logger: testLogger)
        try h.worker.start()
        let relay = try Relay(to: h.endpoint, attack: .flipReadData, tagged: false)
        var config = ClientConfig(workers: [relay.endpoint], secret: Array(h.secret.utf8))
        config.connectionsPerWorker = 1
        config.untaggedFrames = true
        let client = try ShoalClient(config: config)
        let read = try client.read(try client.open(h.ref("o")), offset: 0, length: data.count)
        #expect(relay.altered == 1)
        #expect(read.count == data.count && read != data, "the relay's change should have gone through")
    }

    @Test func aRequestInjectedByARelayIsRefusedAndClosesTheConnection() throws {
        let h = try Harness("relay-inject")
        try h.put("o", [1, 2, 3])
        let relay = try Relay(to: h.endpoint, attack: .injectRequest)
        var config = ClientConfig(workers: [relay.endpoint], secret: Array(h.secret.utf8))
        config.connectionsPerWorker = 1
        config.learnsView = false  // one connection through the relay: the STAT's
        let client = try ShoalClient(config: config)
        let refusedBefore = h.metric("shoal_errors_total{kind=\"unauthenticated\"}")
        #expect {
            _ = try client.open(h.ref("o"))
        } throws: { error in
            // The worker names the injected frame (id 999) as the one that failed its tag.
            let e = error as? ShoalError
            return e?.code == .unauthenticated && e!.message.contains("frame 999 failed authentication")
        }
        #expect(relay.injected == 1)
        #expect(h.metric("shoal_errors_total{kind=\"unauthenticated\"}") == refusedBefore + 1)
        #expect(h.metric("shoal_errors_total{kind=\"not_found\"}") == 0, "the injected STAT was never served")
    }

    @Test func aTLSWorkerServesRealBytesAndRefusesPlainClientsAndOtherCAs() throws {
        let certs = try TestCertificates()
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("tls")
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("tls-cache"), store: fx.storeConfig(), secret: "tls-secret-0123456789")
        config.tls = TLSFiles(certFile: certs.certFile, keyFile: certs.keyFile)
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let endpoint = Endpoint(host: "127.0.0.1", port: worker.port)
        let data = SampleData.bytes(seed: 22, count: (3 << 20) + 5)
        try fx.store().put(bucket: bucket, key: "o", bytes: data)
        let ref = ObjectRef(store: "default", bucket: bucket, key: "o")

        var tlsConfig = ClientConfig(workers: [endpoint], secret: Array("tls-secret-0123456789".utf8))
        tlsConfig.tlsCAFile = certs.caFile
        let client = try ShoalClient(config: tlsConfig)
        let file = try client.open(ref)
        #expect(try client.read(file, offset: 0, length: data.count) == data, "cold, filled from SeaweedFS")
        #expect(try client.read(file, offset: 0, length: data.count) == data, "warm, from the cache")
        #expect(try client.read(file, offset: 1 << 20, length: 100) == Array(data[(1 << 20)..<((1 << 20) + 100)]))

        let plain = try ShoalClient(config: ClientConfig(workers: [endpoint], secret: Array("tls-secret-0123456789".utf8)))
        #expect { _ = try plain.open(ref) } throws: { error in
            (error as? ShoalError)?.message.contains("this worker requires TLS") ?? false
        }

        var strangerConfig = tlsConfig
        strangerConfig.tlsCAFile = certs.otherCAFile
        let stranger = try ShoalClient(config: strangerConfig)
        #expect { _ = try stranger.open(ref) } throws: { error in
            let e = error as? ShoalError
            return e?.code == .connectionFailed && e!.message.contains("TLS handshake with worker \(endpoint) failed")
                && e!.message.contains("certificate verify failed")
        }
        #expect { _ = try ShoalClient(config: { var c = tlsConfig; c.tlsCAFile = certs.directory + "/none.pem"; return c }()) } throws: {
            ($0 as? ShoalError)?.message.contains("cannot load the TLS CA file") ?? false
        }
    }

    /// A TLS worker told plain clients apart by peeking at 4 bytes, polling every millisecond
    /// until they came: connections that sent one byte and waited (no secret, no certificate
    /// needed) kept its cores busy. One byte decides now, and such a client is told at once.
    @Test func aTLSWorkerDecidesOnAPlainClientsFirstByte() throws {
        let certs = try TestCertificates()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("tls-peek"), store: fileStore())
        config.tls = TLSFiles(certFile: certs.certFile, keyFile: certs.keyFile)
        let worker = try Worker(config: config, logger: testLogger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let socket = try TCPSocket.connect(Endpoint(host: "127.0.0.1", port: worker.port), timeoutMillis: 2000)
        defer { socket.close() }
        try socket.send(Array(FrameHeader(type: .hello, requestID: 0, payloadLength: 0).bytes.prefix(1)))
        let deadline = monotonicNanos() + 30_000_000_000
        let head = try socket.receive(count: FrameHeader.size, deadline: deadline)
        let header = try head.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!, maxPayload: 4096).get() }
        let message = String(decoding: try socket.receive(count: Int(header.payloadLength), deadline: deadline), as: UTF8.self)
        #expect(header.type == FrameType.error.rawValue && message.contains("this worker requires TLS"))
    }

    /// Protocol errors were logged a few lines per 10 s, but a TLS worker logged a line for every
    /// plain client and every failed TLS handshake: anyone who could connect chose how fast the
    /// log grew. They share the same limit now.
    @Test func aTLSWorkersRefusalsAreLoggedAtALimitedRate() throws {
        let certs = try TestCertificates()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("tls-log"), store: fileStore())
        config.tls = TLSFiles(certFile: certs.certFile, keyFile: certs.keyFile)
        let lines = CapturedLog()
        var logger = Logger(label: "shoal.worker", factory: { _ in CapturingLogHandler(lines) })
        logger.logLevel = .info
        let worker = try Worker(config: config, logger: logger)
        try worker.start()
        defer { worker.stopDataPlane() }
        let endpoint = Endpoint(host: "127.0.0.1", port: worker.port)
        let tlsRecordStart: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]  // a record that is no ClientHello
        for i in 0..<40 {
            let socket = try TCPSocket.connect(endpoint, timeoutMillis: 2000)
            try socket.send(i % 2 == 0 ? FrameHeader(type: .hello, requestID: 0, payloadLength: 0).bytes : tlsRecordStart)
            _ = try? socket.receive(count: 1, deadline: monotonicNanos() + 10_000_000_000)  // until the worker closes it
            socket.close()
        }
        let closing = lines.messages.filter { $0.hasPrefix("closing a connection") }
        // 5 lines per 10 s (a slow machine may straddle two intervals: 5, then 5 and one more).
        #expect(closing.count <= 11, "\(closing.count) lines for 40 refused connections")
        #expect(!closing.isEmpty)
    }

    @Test func framesWithoutTagsNeedTheWorkersBenchmarkSwitch() throws {
        let h = try Harness("untagged")
        let data = SampleData.bytes(seed: 23, count: 2 << 20)
        try h.put("o", data)
        var config = ClientConfig(workers: [h.endpoint], secret: Array(h.secret.utf8))
        config.untaggedFrames = true
        let asking = try ShoalClient(config: config)
        #expect { _ = try asking.open(h.ref("o")) } throws: { error in
            (error as? ShoalError)?.message.contains("allowUntaggedFrames") ?? false
        }
        var switched = h.worker.config
        switched.allowUntaggedFrames = true
        h.worker.stopDataPlane()
        h.worker = try Worker(config: switched, logger: testLogger)
        try h.worker.start()
        config.workers = [h.endpoint]
        let client = try ShoalClient(config: config)
        #expect(try client.read(try client.open(h.ref("o")), offset: 0, length: data.count) == data)
    }

    @Test func aTLSWorkerRefusesABadKeyAtStart() throws {
        let certs = try TestCertificates()
        var config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("tls-bad"), store: fileStore())
        config.tls = TLSFiles(certFile: certs.certFile, keyFile: certs.directory + "/ca.key")
        let worker = try Worker(config: config, logger: testLogger)
        #expect { try worker.start() } throws: { error in
            (error as? ShoalError)?.message.contains("does not belong to the certificate") ?? false
        }
    }

    @Test func aFailingRandomSourceStopsTheClientAndTheWorkerWithAClearError() throws {
        let config = testWorkerConfig(cacheDirectory: makeTemporaryDirectory("random"), store: fileStore())
        let worker = try Worker(config: config, logger: testLogger)
        FaultInjection.setRandomSource(failingWith: EIO)
        defer { FaultInjection.setRandomSource(failingWith: nil) }
        #expect {
            _ = try WorkerConnection(endpoint: Endpoint(host: "127.0.0.1", port: 1), secret: [1])
        } throws: { error in
            let e = error as? ShoalError
            return e?.code == .internal && e!.message.contains("random source")
        }
        #expect { try worker.start() } throws: { error in
            (error as? ShoalError)?.message.contains("random source") ?? false
        }
    }
}

/// Log lines a worker wrote, for tests that count them.
final class CapturedLog: @unchecked Sendable {
    private let lock = ConditionLock()
    private var lines: [String] = []
    var messages: [String] { lock.withLock { lines } }
    func append(_ line: String) { lock.withLock { lines.append(line) } }
}

struct CapturingLogHandler: LogHandler {
    let log: CapturedLog
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    init(_ log: CapturedLog) { self.log = log }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        log.append(event.message.description)
    }
}
