#if canImport(Glibc)
import Glibc
#endif
import ShoalCore

/// The thin interface every RDMA call goes through (docs/DESIGN.md, "RDMA"), with two
/// implementations: `VerbsRDMADevice` (libibverbs, a real verbs stack) and
/// `SimulatedRDMADevice` (an in-process simulation: RDMA WRITE done as a memory copy). The
/// transport above it (`RDMAQueue`: credits, chains, error state) is the same on both, so what
/// the simulation verifies is the transport's logic, and what only a real stack can show (that
/// the bytes crossed a NIC, the figures) is verified on one.
public protocol RDMADevice: AnyObject {
    var name: String { get }
    /// True for the in-process simulation: every report says so.
    var isSimulated: Bool { get }
    /// Registers `length` bytes at `base` for local use and for remote writes into them (never
    /// remote reads).
    func register(_ base: UnsafeMutableRawPointer, length: Int) throws(RDMAError) -> RDMAMemoryRegion
    func deregister(_ region: RDMAMemoryRegion)
    /// A reliable-connected queue pair with room for `depth` work requests, not yet connected.
    /// `acceptsWrites`: its peer may RDMA-write into this side's registered memory through it
    /// (a reader's queue pair); false for a queue pair that only writes (a worker serving), so a
    /// peer can neither write nor read the worker's memory whatever rkey it guesses.
    func makeQueuePair(depth: Int, acceptsWrites: Bool) throws(RDMAError) -> any RDMAQueuePairDriver
}

extension RDMADevice {
    /// A queue pair that accepts writes (the self test's, which write both ways).
    public func makeQueuePair(depth: Int) throws(RDMAError) -> any RDMAQueuePairDriver {
        try makeQueuePair(depth: depth, acceptsWrites: true)
    }
}

/// A queue pair as a device drives it: connect, post a chain of writes, poll completions.
public protocol RDMAQueuePairDriver: AnyObject {
    /// What the peer needs to connect to this queue pair.
    var address: RDMAQueuePairAddress { get }
    func connect(to peer: RDMAQueuePairAddress) throws(RDMAError)
    /// Posts `writes` as one chain, only the last signalled; work request `i` carries
    /// `RDMACompletion.workRequestID(chain: id, index: i)`. Returns how many the device took:
    /// all of them, or fewer with the error that stopped it.
    func post(_ writes: [RDMAWrite], id: UInt64) -> (posted: Int, error: RDMAError?)
    /// Up to `max` completions that are ready (none: empty, no wait).
    func poll(max: Int) throws(RDMAError) -> [RDMACompletion]
    /// Moves the queue pair to the error state: what it holds is flushed back, and it takes no
    /// more work (after a post the device took only part of).
    func moveToError()
    func close()
}

/// Which device a worker or a client uses: libibverbs' name for it and the address whose RoCEv2
/// GID its queue pairs use (nil: the first device, the port's first GID), or, in tests only, the
/// in-process SIMULATED device (it reaches only peers in the same process).
public struct RDMADeviceChoice: Sendable, Equatable {
    public var device: String?
    public var gidAddress: String?
    public var simulated = false

    public init(device: String? = nil, gidAddress: String? = nil, simulated: Bool = false) {
        self.device = device
        self.gidAddress = gidAddress
        self.simulated = simulated
    }

    /// Opens it (the simulation under `simulatedName`).
    public func open(simulatedName: String) throws(RDMAError) -> any RDMADevice {
        if simulated { return SimulatedRDMADevice(name: simulatedName) }
        return try VerbsRDMADevice(name: device, gidAddress: gidAddress)
    }
}

public struct RDMAError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Registered memory: what a local work request names (`lkey`) and what a peer writes with (`rkey`).
public struct RDMAMemoryRegion: Sendable, Equatable {
    public var address: UInt64
    public var length: Int
    public var lkey: UInt32
    public var rkey: UInt32
    /// The device's own handle (an `ibv_mr` pointer, or the simulation's number).
    let handle: UInt
}

/// A queue pair's number, its port's GID (RoCEv2, chosen by address) and the first packet
/// sequence number it sends (random, 24 bits, so a stray retransmission meant for an earlier
/// queue pair of the same number is not taken): all a peer needs.
public struct RDMAQueuePairAddress: Sendable, Equatable, CustomStringConvertible {
    public var queuePair: UInt32
    public var gid: [UInt8]
    public var psn: UInt32

    public init(queuePair: UInt32, gid: [UInt8], psn: UInt32 = 0) {
        self.queuePair = queuePair
        self.gid = gid
        self.psn = psn & 0xFF_FFFF
    }

    /// A random 24-bit starting sequence number (0 where the system's random source fails).
    public static func randomPSN() -> UInt32 {
        guard let b = try? secureRandomBytes(3) else { return 0 }
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16
    }

    public var description: String { "qp \(queuePair) gid \(RDMAQueuePairAddress.format(gid))" }

    /// A GID as an address: dotted IPv4 for an IPv4-mapped one (RoCEv2 over IPv4), hex otherwise.
    public static func format(_ gid: [UInt8]) -> String {
        if gid.count == 16, gid[0..<10].allSatisfy({ $0 == 0 }), gid[10] == 0xff, gid[11] == 0xff {
            return gid[12...].map(String.init).joined(separator: ".")
        }
        return stride(from: 0, to: gid.count, by: 2).map { i in
            String(UInt16(gid[i]) << 8 | UInt16(i + 1 < gid.count ? gid[i + 1] : 0), radix: 16)
        }.joined(separator: ":")
    }
}

/// One RDMA WRITE: `length` bytes at `local` (registered, `lkey`) to `remoteAddress` in the
/// peer's memory (`rkey`). Never zero bytes: virtualised RDMA drops empty writes.
public struct RDMAWrite: Sendable {
    public var local: UInt64
    public var length: Int
    public var lkey: UInt32
    public var remoteAddress: UInt64
    public var rkey: UInt32

    public init(local: UnsafeRawPointer, length: Int, lkey: UInt32, remoteAddress: UInt64, rkey: UInt32) {
        self.local = UInt64(UInt(bitPattern: local))
        self.length = length
        self.lkey = lkey
        self.remoteAddress = remoteAddress
        self.rkey = rkey
    }
}

public struct RDMACompletion: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case success
        /// Flushed: posted on a queue pair that had failed (it never ran).
        case flushed
        /// The work request failed: the device's reason.
        case failed(String)
    }

    /// The chain's number, and the work request's place in it.
    public var id: UInt64
    public var index: Int
    public var status: Status

    public init(id: UInt64, index: Int = 0, status: Status) {
        self.id = id
        self.index = index
        self.status = status
    }

    /// A work request's `wr_id`: its chain's number and its place in the chain.
    public static func workRequestID(chain: UInt64, index: Int) -> UInt64 { chain << 16 | UInt64(index & 0xFFFF) }

    /// The completion of the work request whose `wr_id` is `workRequestID`.
    public init(workRequestID: UInt64, status: Status) {
        self.init(id: workRequestID >> 16, index: Int(workRequestID & 0xFFFF), status: status)
    }
}

/// A connected queue pair with its send queue counted (`SendQueueCredits`): writes go in chains
/// that fit the queue, only the last signalled; a chain the device takes only part of, or an
/// error completion, stops the queue pair (the caller falls back for that peer).
public final class RDMAQueue {
    public let driver: any RDMAQueuePairDriver
    public private(set) var credits: SendQueueCredits
    /// Work requests posted, and the bytes they carried.
    public private(set) var workRequests = 0
    public private(set) var bytesPosted = 0

    public init(driver: any RDMAQueuePairDriver, depth: Int) {
        self.driver = driver
        credits = SendQueueCredits(depth: depth)
    }

    public var isStopped: Bool { credits.state != .ready }

    /// Posts `writes` as one chain: its number, or nil when the queue has no room for all of it
    /// now (poll, then try again). Throws once the queue pair has stopped, or if this post stops it.
    public func write(_ writes: [RDMAWrite]) throws(RDMAError) -> UInt64? {
        if case .failed(let reason) = credits.state { throw RDMAError("the queue pair has stopped: \(reason)") }
        guard !writes.isEmpty else { return nil }
        guard writes.count <= min(credits.maxChain, 0xFFFF) else {
            throw RDMAError("a chain of \(writes.count) work requests cannot fit a queue of \(credits.depth)")
        }
        if let empty = writes.firstIndex(where: { $0.length <= 0 }) {
            throw RDMAError("work request \(empty) of the chain is empty (zero-byte writes are dropped by virtualised RDMA)")
        }
        guard let id = credits.reserve(writes.count) else { return nil }
        let (posted, error) = driver.post(writes, id: id)
        workRequests += posted
        bytesPosted += writes.prefix(posted).reduce(0) { $0 + $1.length }
        if let error {
            credits.postFailed(id, posted: posted, reason: error.message)
            driver.moveToError()
            throw RDMAError("the device took \(posted) of \(writes.count) work requests: \(error.message); the queue pair has stopped")
        }
        return id
    }

    /// The completions ready now, with the queue's counts brought up to date.
    public func poll(max: Int = 32) throws(RDMAError) -> [RDMACompletion] {
        let done = try driver.poll(max: max)
        for c in done {
            switch c.status {
            case .success: credits.completed(c.id)
            case .flushed: credits.flushed()
            case .failed(let reason): credits.failed(c.id, index: c.index, reason: reason)
            }
        }
        return done
    }

    /// Polls until chain `id` completes (or the queue pair stops): its status.
    public func wait(for id: UInt64, timeoutNanos: UInt64 = 10_000_000_000) throws(RDMAError) -> RDMACompletion.Status {
        let deadline = monotonicNanos() + timeoutNanos
        while monotonicNanos() < deadline {
            let done = try poll()
            for c in done where c.id == id { return c.status }
            if case .failed(let reason) = credits.state { return .failed(reason) }
            // Its completion came in an earlier poll (or a later chain's retired it).
            if credits.isRetired(id) { return .success }
            if done.isEmpty { sched_yield() }
        }
        throw RDMAError("no completion for chain \(id) in \(timeoutNanos / 1_000_000) ms")
    }

    /// Tears the queue pair down; nothing it held is outstanding any more.
    public func close() {
        driver.close()
        credits.reset()
    }
}
