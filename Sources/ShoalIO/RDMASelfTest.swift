#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys

/// `shoal selftest rdma`: a loopback transfer between two queue pairs of one device, checked
/// byte for byte; latency and bandwidth of RDMA WRITE; the credit accounting (never above the
/// queue's depth); and the error paths (a bad rkey, a write past a region's end; on the
/// simulation also a post the device takes only part of). Every report names its device and
/// says whether it was the simulation.
public struct RDMASelfTestReport: Sendable, Codable {
    public struct Check: Sendable, Codable {
        public var name: String
        public var passed: Bool
        public var detail: String
    }

    public var device: String
    public var simulated: Bool
    public var gid: String
    public var loopbackBytes: Int
    public var workRequests: Int
    public var bytesPerWorkRequest: Int
    public var queueDepth: Int
    /// The most work requests outstanding at once: never above `queueDepth`.
    public var highWater: Int
    /// Median of one signalled 64-byte write and its completion, microseconds.
    public var latencyMicros: Double
    /// Bytes per second of 1 MiB writes kept `queueDepth` deep.
    public var bandwidthBytesPerSecond: Double
    public var checks: [Check]

    public var passed: Bool { checks.allSatisfy(\.passed) }
}

public enum RDMASelfTest {
    /// A source of `size` sample bytes and a zeroed target of the same size, page-aligned (the
    /// caller frees both).
    static func buffers(_ size: Int, seed: UInt64) -> (UnsafeMutableRawPointer, UnsafeMutableRawPointer) {
        let source = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        let target = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        SampleData.bytes(seed: seed, count: size).withUnsafeBytes { source.copyMemory(from: $0.baseAddress!, byteCount: size) }
        memset(target, 0, size)
        return (source, target)
    }

    /// Runs the self test on `device`. `bandwidthBytes`: how much the bandwidth check moves.
    public static func run(_ device: any RDMADevice, depth: Int = 16, bandwidthBytes: Int = 64 << 20) throws(RDMAError) -> RDMASelfTestReport {
        let size = 8 << 20
        let (source, target) = buffers(size, seed: 1)
        defer {
            source.deallocate()
            target.deallocate()
        }
        let src = try device.register(source, length: size)
        defer { device.deregister(src) }
        let dst = try device.register(target, length: size)
        defer { device.deregister(dst) }
        var checks: [RDMASelfTestReport.Check] = []

        // Two queue pairs of the device, connected to each other (loopback).
        func pair(peerAcceptsWrites: Bool = true) throws(RDMAError) -> (RDMAQueue, RDMAQueue) {
            let a = try device.makeQueuePair(depth: depth)
            let b = try device.makeQueuePair(depth: depth, acceptsWrites: peerAcceptsWrites)
            try a.connect(to: b.address)
            try b.connect(to: a.address)
            return (RDMAQueue(driver: a, depth: depth), RDMAQueue(driver: b, depth: depth))
        }
        func write(_ q: RDMAQueue, _ offset: Int, _ length: Int, rkey: UInt32? = nil, remote: UInt64? = nil) -> RDMAWrite {
            RDMAWrite(local: source + offset, length: length, lkey: src.lkey, remoteAddress: remote ?? dst.address + UInt64(offset), rkey: rkey ?? dst.rkey)
        }
        /// Posts `writes` in chains as the queue has room, polling as it goes; waits for all.
        func stream(_ q: RDMAQueue, _ writes: [RDMAWrite], chain: Int) throws(RDMAError) {
            var next = 0
            var last: UInt64?
            while next < writes.count {
                let group = Array(writes[next..<min(writes.count, next + chain)])
                if let id = try q.write(group) {
                    last = id
                    next += group.count
                } else {
                    _ = try q.poll()
                }
            }
            if let last {
                let status = try q.wait(for: last)
                guard status == .success else { throw RDMAError("a write failed: \(status)") }
            }
            // Every chain retired (the last one's completion retires the older ones).
            while q.credits.outstanding > 0 { _ = try q.poll() }
        }

        let (a, b) = try pair()
        defer {
            a.close()
            b.close()
        }
        // Loopback: 8 MiB in 1 MiB writes, chains of 4.
        let piece = 1 << 20
        try stream(a, (0..<(size / piece)).map { write(a, $0 * piece, piece) }, chain: 4)
        let exact = memcmp(source, target, size) == 0
        checks.append(.init(name: "loopback transfer byte-exact", passed: exact, detail: "\(size) bytes in \(size / piece) writes of \(piece)"))

        // Latency: one signalled 64-byte write at a time.
        var samples: [Double] = []
        for i in 0..<200 {
            let start = monotonicNanos()
            guard let id = try a.write([write(a, (i * 64) % size, 64)]) else { throw RDMAError("no room for one write on an idle queue") }
            let status = try a.wait(for: id)
            guard status == .success else { throw RDMAError("a 64-byte write failed: \(status)") }
            samples.append(Double(monotonicNanos() - start) / 1000)
        }
        samples.sort()
        let latency = samples[samples.count / 2]

        // Bandwidth: 1 MiB writes, the queue kept full in chains of 4.
        let count = max(1, bandwidthBytes / piece)
        let started = monotonicNanos()
        try stream(a, (0..<count).map { write(a, ($0 * piece) % size, piece) }, chain: 4)
        let seconds = max(1e-9, Double(monotonicNanos() - started) / 1e9)
        let bandwidth = Double(count * piece) / seconds
        let highWater = a.credits.highWater
        checks.append(.init(name: "send queue never above its depth", passed: highWater <= depth,
                            detail: "at most \(highWater) of \(depth) work requests outstanding"))

        // Error paths, each on a pair of its own: the queue pair stops and later posts are refused.
        func errorPath(_ name: String, peerAcceptsWrites: Bool = true, _ make: (RDMAQueue) -> RDMAWrite) -> RDMASelfTestReport.Check {
            do throws(RDMAError) {
                let (x, y) = try pair(peerAcceptsWrites: peerAcceptsWrites)
                defer {
                    x.close()
                    y.close()
                }
                guard let id = try x.write([make(x)]) else { return .init(name: name, passed: false, detail: "not posted") }
                let status = try x.wait(for: id)
                guard case .failed(let reason) = status else { return .init(name: name, passed: false, detail: "completed as \(status)") }
                let refused: Bool
                do { refused = try x.write([write(x, 0, 64)]) == nil } catch { refused = true }
                return .init(name: name, passed: x.isStopped && refused,
                             detail: "error completion (\(reason)); queue pair stopped: \(x.isStopped); next post refused: \(refused)")
            } catch {
                return .init(name: name, passed: false, detail: "\(error)")
            }
        }
        checks.append(errorPath("a write with a bad rkey fails and stops its queue pair") { q in write(q, 0, 4096, rkey: dst.rkey ^ 0x5A5A) })
        checks.append(errorPath("a write past the region's end fails and stops its queue pair") { q in
            write(q, 0, 4096, remote: dst.address + UInt64(size) - 1024)
        })
        // A worker's queue pairs only write: a peer's write into memory behind one is refused
        // even with a valid rkey (the queue pair's access, checked before the region's).
        checks.append(errorPath("a write into a queue pair that only writes (a worker's) fails", peerAcceptsWrites: false) { q in write(q, 0, 4096) })
        if let sim = device as? SimulatedRDMADevice {
            checks.append(partialPost(sim, pair: { () throws(RDMAError) in try pair() }, write: write))
        }
        if let verbs = device as? VerbsRDMADevice {
            checks.append(connectionCheck(address: RDMAQueuePairAddress.format(verbs.gid)))
        }
        return RDMASelfTestReport(device: device.name, simulated: device.isSimulated, gid: RDMAQueuePairAddress.format(a.driver.address.gid),
                                  loopbackBytes: size, workRequests: a.workRequests, bytesPerWorkRequest: a.bytesPosted / max(1, a.workRequests),
                                  queueDepth: depth, highWater: highWater, latencyMicros: latency, bandwidthBytesPerSecond: bandwidth,
                                  checks: checks)
    }

    /// Simulation only: the device takes 2 of a chain of 4 and fails; the queue pair is moved to
    /// the error state, and the next post is refused (the peer falls back to TCP).
    private static func partialPost(_ sim: SimulatedRDMADevice, pair: () throws(RDMAError) -> (RDMAQueue, RDMAQueue),
                                    write: (RDMAQueue, Int, Int, UInt32?, UInt64?) -> RDMAWrite) -> RDMASelfTestReport.Check {
        let name = "a post the device takes only part of stops the queue pair (injected on the simulation)"
        do throws(RDMAError) {
            let (x, y) = try pair()
            defer {
                x.close()
                y.close()
            }
            var faults = SimulatedRDMADevice.Faults()
            faults.failNextPostAfter = 2
            sim.inject(faults)
            let failure: String
            do {
                _ = try x.write((0..<4).map { write(x, $0 * 4096, 4096, nil, nil) })
                return .init(name: name, passed: false, detail: "the post did not fail")
            } catch {
                failure = error.message
            }
            let refused: Bool
            do { refused = try x.write([write(x, 0, 64, nil, nil)]) == nil } catch { refused = true }
            return .init(name: name, passed: x.isStopped && refused && x.credits.outstanding <= 2,
                         detail: "\(failure); stopped: \(x.isStopped); next post refused: \(refused); the 2 never posted are off the count")
        } catch {
            return .init(name: name, passed: false, detail: "\(error)")
        }
    }

    /// Two ends connected through rdma_cm on `address` (a listener on one thread, a peer dialing
    /// it): the listener names a buffer (address, rkey, length) in its handshake, the peer writes
    /// 1 MiB into it in a chain of four, and the bytes are compared.
    static func connectionCheck(address: String) -> RDMASelfTestReport.Check {
        let name = "rdma_cm: a peer writes 1 MiB into a buffer named in the listener's handshake"
        let size = 1 << 20
        let (source, target) = buffers(size, seed: 2)
        defer {
            source.deallocate()
            target.deallocate()
        }
        do throws(RDMAError) {
            let listener = try RDMAListener(address: address)
            defer { listener.close() }
            let mr = try listener.device.register(target, length: size)
            defer { listener.device.deregister(mr) }
            var offer: [UInt8] = []
            withUnsafeBytes(of: mr.address.littleEndian) { offer += $0 }
            withUnsafeBytes(of: mr.rkey.littleEndian) { offer += $0 }
            withUnsafeBytes(of: UInt32(size).littleEndian) { offer += $0 }
            let accepted = AcceptBox()
            let handshake = offer
            do {
                try OSThread.spawn(name: "rdma-accept") {
                    accepted.set(Result { () throws(RDMAError) -> RDMAConnection in try listener.accept(depth: 16, data: handshake) })
                }
            } catch {
                return .init(name: name, passed: false, detail: "cannot start the listener's thread: \(error)")
            }
            // The listener's thread is waited for on every way out (it uses the listener).
            let dialed = Result { () throws(RDMAError) -> RDMAConnection in
                try RDMAConnection.connect(to: address, port: listener.port, depth: 16, data: Array("shoal".utf8))
            }
            let answered = accepted.wait()
            if case .success(let c) = answered, case .failure = dialed { c.close() }
            if case .success(let c) = dialed, case .failure = answered { c.close() }
            let conn = try dialed.get()
            defer { conn.close() }
            let server = try answered.get()
            defer { server.close() }
            guard conn.peerData.count >= 16 else { return .init(name: name, passed: false, detail: "the handshake carried \(conn.peerData.count) bytes") }
            let remote = conn.peerData.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self) }.littleEndian
            let rkey = conn.peerData.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) }.littleEndian
            let src = try conn.device.register(source, length: size)
            defer { conn.device.deregister(src) }
            let q = RDMAQueue(driver: conn.queuePair, depth: 16)
            let piece = size / 4
            let writes = (0..<4).map { i in
                RDMAWrite(local: source + i * piece, length: piece, lkey: src.lkey, remoteAddress: remote + UInt64(i * piece), rkey: rkey)
            }
            guard let id = try q.write(writes) else { return .init(name: name, passed: false, detail: "no room on a new queue pair") }
            let status = try q.wait(for: id)
            let exact = memcmp(source, target, size) == 0
            let heard = server.peerData == Array("shoal".utf8)
            return .init(name: name, passed: status == .success && exact && heard,
                         detail: "\(address):\(listener.port), queue pair \(conn.queuePair.address.queuePair) to \(server.queuePair.address.queuePair); "
                            + "completion \(status); byte-exact: \(exact); the listener got the peer's handshake: \(heard)")
        } catch {
            return .init(name: name, passed: false, detail: "\(error)")
        }
    }
}

/// The listener thread's accepted connection, for the thread that waits on it.
private final class AcceptBox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var result: Result<RDMAConnection, RDMAError>?

    func set(_ r: Result<RDMAConnection, RDMAError>) {
        lock.withLock { result = r }
        lock.broadcast()
    }

    func wait() -> Result<RDMAConnection, RDMAError> {
        lock.lock()
        defer { lock.unlock() }
        while result == nil { _ = lock.wait() }
        return result!
    }
}
