#if canImport(Glibc)
import Glibc
#endif
import ShoalCore

/// A SIMULATED RDMA device, in process: not RDMA hardware and not a verbs stack. An RDMA WRITE
/// is a memory copy into the peer's registered memory (checked against its rkey and bounds as a
/// NIC would), completions are generated in order, and failures can be injected. It verifies the
/// transport's state machines, credit accounting, error paths and fallback in CI; anything it
/// runs is reported as simulated, never as verified RDMA.
public final class SimulatedRDMADevice: RDMADevice, @unchecked Sendable {
    public let name: String
    public var isSimulated: Bool { true }

    /// Failures to inject, for the error paths real hardware will not produce on demand.
    public struct Faults: Sendable {
        /// The next post takes this many work requests of its chain, then fails (ENOMEM).
        public var failNextPostAfter: Int?
        /// Every write fails at the remote end (as a bad rkey would), stopping its queue pair.
        public var failWrites = false
        /// Every write lands with its first byte changed (memory that is not what the registration
        /// pinned, say): the completion says success, and only the reader's CRC32C can tell.
        public var corruptWrites = false

        public init() {}
    }

    private let lock = ConditionLock()
    private var regions: [UInt32: RDMAMemoryRegion] = [:]
    private var nextKey: UInt32 = 0x100
    private var faults = Faults()
    /// Queue pairs by number, across every simulated device (the simulated fabric).
    private static let fabric = SimulatedFabric()

    public init(name: String = "simulated0") {
        self.name = name
    }

    public func inject(_ f: Faults) { lock.withLock { faults = f } }

    public func register(_ base: UnsafeMutableRawPointer, length: Int) throws(RDMAError) -> RDMAMemoryRegion {
        guard length > 0 else { throw RDMAError("cannot register an empty region") }
        return lock.withLock {
            let key = nextKey
            nextKey += 1
            let mr = RDMAMemoryRegion(address: UInt64(UInt(bitPattern: base)), length: length, lkey: key, rkey: key, handle: UInt(key))
            regions[key] = mr
            return mr
        }
    }

    public func deregister(_ region: RDMAMemoryRegion) { _ = lock.withLock { regions.removeValue(forKey: region.rkey) } }

    public func makeQueuePair(depth: Int, acceptsWrites: Bool) throws(RDMAError) -> any RDMAQueuePairDriver {
        SimulatedQueuePair(device: self, number: SimulatedRDMADevice.fabric.nextNumber(), depth: depth, acceptsWrites: acceptsWrites)
    }

    /// The region `rkey` names, if `length` bytes at `address` lie inside it.
    fileprivate func target(_ address: UInt64, _ length: Int, rkey: UInt32) -> Bool {
        lock.withLock {
            guard let r = regions[rkey] else { return false }
            return address >= r.address && address + UInt64(length) <= r.address + UInt64(r.length)
        }
    }

    fileprivate func local(_ address: UInt64, _ length: Int, lkey: UInt32) -> Bool { target(address, length, rkey: lkey) }

    fileprivate func takeFaults() -> Faults {
        lock.withLock {
            let f = faults
            faults.failNextPostAfter = nil
            return f
        }
    }

    fileprivate static func queuePair(_ number: UInt32) -> SimulatedQueuePair? { fabric.find(number) }
    fileprivate static func add(_ qp: SimulatedQueuePair) { fabric.add(qp) }
    fileprivate static func remove(_ number: UInt32) { fabric.remove(number) }
}

/// The simulated queue pairs, by number (weakly held).
private final class SimulatedFabric: @unchecked Sendable {
    private final class Weak {
        weak var qp: SimulatedQueuePair?
        init(_ qp: SimulatedQueuePair) { self.qp = qp }
    }

    private let lock = ConditionLock()
    private var pairs: [UInt32: Weak] = [:]
    private var next: UInt32 = 1

    func nextNumber() -> UInt32 { lock.withLock { defer { next += 1 }; return next } }
    func add(_ qp: SimulatedQueuePair) { lock.withLock { pairs[qp.number] = Weak(qp) } }
    func remove(_ number: UInt32) { _ = lock.withLock { pairs.removeValue(forKey: number) } }
    func find(_ number: UInt32) -> SimulatedQueuePair? { lock.withLock { pairs[number]?.qp } }
}

/// A simulated reliable-connected queue pair: writes run at post time, in order.
final class SimulatedQueuePair: RDMAQueuePairDriver, @unchecked Sendable {
    let number: UInt32
    private weak var device: SimulatedRDMADevice?
    private let depth: Int
    private var peer: UInt32?
    private var failed = false
    private var completions: [RDMACompletion] = []
    /// Work requests on the send queue (posted, not yet retired by a polled completion), by
    /// chain, as the device counts them: a check on the transport's own counting.
    private var outstanding = 0
    private var perChain: [UInt64: Int] = [:]
    private(set) var highWater = 0
    var outstandingForTests: Int { lock.withLock { outstanding } }

    /// A peer may write into this side's memory through it (as a NIC checks the queue pair's
    /// access flags before the region's).
    let acceptsWrites: Bool

    init(device: SimulatedRDMADevice, number: UInt32, depth: Int, acceptsWrites: Bool) {
        self.device = device
        self.number = number
        self.depth = depth
        self.acceptsWrites = acceptsWrites
        SimulatedRDMADevice.add(self)
    }

    var address: RDMAQueuePairAddress {
        // A simulated GID: the IPv4-mapped loopback address.
        RDMAQueuePairAddress(queuePair: number, gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1])
    }

    func connect(to peer: RDMAQueuePairAddress) throws(RDMAError) {
        guard SimulatedRDMADevice.queuePair(peer.queuePair) != nil else {
            throw RDMAError("simulated queue pair \(peer.queuePair) does not exist")
        }
        self.peer = peer.queuePair
    }

    /// Posts and polls may come from different threads, as with verbs.
    private let lock = ConditionLock()

    func post(_ writes: [RDMAWrite], id: UInt64) -> (posted: Int, error: RDMAError?) {
        // The peer's state is read before this queue pair's lock is taken (two queue pairs
        // posting to each other must not wait on each other's locks).
        let peerQP = lock.withLock { peer }.flatMap { SimulatedRDMADevice.queuePair($0) }
        let peerFailed = peerQP.map { $0.isFailed || !$0.acceptsWrites } ?? false
        lock.lock()
        defer { lock.unlock() }
        guard let device else { return (0, RDMAError("the simulated device is gone")) }
        guard let peer, let remote = SimulatedRDMADevice.queuePair(peer), let remoteDevice = remote.device else {
            return (0, RDMAError("the simulated queue pair is not connected"))
        }
        let faults = device.takeFaults()
        for (i, w) in writes.enumerated() {
            if let after = faults.failNextPostAfter, i >= after { return (i, RDMAError("ENOMEM (injected by the simulation)")) }
            // A verbs device refuses a post beyond its queue's room; the transport never makes one.
            guard outstanding < depth else { return (i, RDMAError("send queue full (\(depth))")) }
            let last = i == writes.count - 1
            outstanding += 1
            highWater = max(highWater, outstanding)
            perChain[id, default: 0] += 1
            if failed {
                completions.append(RDMACompletion(id: id, index: i, status: .flushed))
                continue
            }
            guard device.local(w.local, w.length, lkey: w.lkey) else {
                failed = true
                completions.append(RDMACompletion(id: id, index: i, status: .failed("local protection error (simulated)")))
                continue
            }
            guard !faults.failWrites, !peerFailed, remoteDevice.target(w.remoteAddress, w.length, rkey: w.rkey) else {
                failed = true
                completions.append(RDMACompletion(id: id, index: i, status: .failed("remote access error (simulated)")))
                continue
            }
            memcpy(UnsafeMutableRawPointer(bitPattern: UInt(w.remoteAddress))!, UnsafeRawPointer(bitPattern: UInt(w.local))!, w.length)
            if faults.corruptWrites {
                let first = UnsafeMutablePointer<UInt8>(bitPattern: UInt(w.remoteAddress))!
                first.pointee ^= 0xFF
            }
            if last {
                completions.append(RDMACompletion(id: id, index: i, status: .success))
            }
        }
        return (writes.count, nil)
    }

    func poll(max: Int) throws(RDMAError) -> [RDMACompletion] {
        lock.lock()
        defer { lock.unlock() }
        let n = min(max, completions.count)
        let out = Array(completions.prefix(n))
        completions.removeFirst(n)
        for c in out {
            if c.status == .success {
                // A signalled success retires its chain and every older one (in order).
                for (chain, count) in perChain where chain <= c.id {
                    outstanding -= count
                    perChain[chain] = nil
                }
            } else {
                // A failed one retires the chain's work requests up to it (those before it ran,
                // silently); a flushed one retires itself.
                let n = c.status == .flushed ? 1 : c.index + 1
                let left = perChain[c.id, default: 0]
                let retired = min(left, n)
                outstanding -= retired
                perChain[c.id] = left - retired == 0 ? nil : left - retired
            }
        }
        return out
    }

    func moveToError() { lock.withLock { failed = true } }

    /// In the error state (a peer's write to it fails, as a NIC would refuse it).
    var isFailed: Bool { lock.withLock { failed } }

    func close() { SimulatedRDMADevice.remove(number) }

    deinit { SimulatedRDMADevice.remove(number) }
}
