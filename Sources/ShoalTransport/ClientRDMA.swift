#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys

/// Which RDMA device a client reads through (nil in `ClientConfig`: TCP only).
public typealias ClientRDMASettings = RDMADeviceChoice

/// A client's RDMA (docs/DESIGN.md, "RDMA"): one device per process, opened when first used (so
/// libibverbs is loaded only then), and a registration cache of the caller's buffers: a buffer
/// is registered once, by the pages it spans, and reused by every READ into it, never per read.
/// Workers RDMA-write READ data straight into those buffers; each connection that uses it has a
/// queue pair of its own (`RDMAChannel`).
public final class ClientRDMA: @unchecked Sendable {
    public let device: any RDMADevice
    /// The process that opened it (its fork generation): a forked child opens a device of its
    /// own (verbs resources do not cross fork).
    private let forkGeneration: Int
    private let lock = ConditionLock()
    private var regions: [Registration] = []
    private var clock: UInt64 = 0
    private var counts = Counts()
    /// The most registrations kept, and the most bytes they may pin; the least recently used
    /// unused ones go first.
    public let maxRegistrations: Int
    public let maxRegisteredBytes: Int

    public struct Counts: Sendable, Equatable {
        /// Buffers registered, READs that found theirs registered, registrations dropped.
        public var registrations = 0
        public var reused = 0
        public var evicted = 0
        /// READs whose data came by RDMA; READs asked by RDMA and answered over TCP instead (the
        /// worker's write failed, or the data in memory did not match its CRC32C).
        public var rdmaReads = 0
        public var fallbacks = 0
        /// Connections whose RDMA could not be set up (they run over TCP).
        public var connectFailures = 0
    }

    final class Registration {
        let start: UInt
        let end: UInt
        let region: RDMAMemoryRegion
        var uses = 0
        var lastUse: UInt64 = 0
        var dropped = false
        /// Registered by its owner (a worker's buffer pool), not by this cache: never dropped here.
        var owned = true
        init(start: UInt, end: UInt, region: RDMAMemoryRegion) {
            self.start = start
            self.end = end
            self.region = region
        }
    }

    /// `preregistered`: memory its owner registered with `device` already (a worker's buffer
    /// pool, for its transfers from other workers): READs into it use that registration.
    public init(device: any RDMADevice, preregistered: [RDMAMemoryRegion] = [], maxRegistrations: Int = 1024, maxRegisteredBytes: Int = 16 << 30) {
        self.device = device
        forkGeneration = ForkGeneration.current
        self.maxRegistrations = max(1, maxRegistrations)
        self.maxRegisteredBytes = maxRegisteredBytes
        regions = preregistered.map { r in
            let entry = Registration(start: UInt(r.address), end: UInt(r.address) + UInt(r.length), region: r)
            entry.owned = false
            return entry
        }
    }

    /// Opens the device `settings` names.
    public static func open(_ settings: ClientRDMASettings) throws(RDMAError) -> ClientRDMA {
        ClientRDMA(device: try settings.open(simulatedName: "simulated-client"))
    }

    deinit {
        // In a forked child the registrations are the parent's (through shared descriptors).
        guard isUsable else { return }
        for r in regions where r.owned { device.deregister(r.region) }
    }

    public var isUsable: Bool { forkGeneration == ForkGeneration.current }

    public var counters: Counts { lock.withLock { counts } }

    package func count(_ body: (inout Counts) -> Void) { lock.withLock { body(&counts) } }

    /// The registration covering `count` bytes at `p` (made now, by whole pages, if none does),
    /// held for one READ until `release`.
    func acquire(_ p: UnsafeMutableRawPointer, count: Int) throws(RDMAError) -> Registration {
        let start = UInt(bitPattern: p)
        let end = start + UInt(count)
        lock.lock()
        defer { lock.unlock() }
        clock += 1
        if let r = regions.first(where: { $0.start <= start && end <= $0.end }) {
            r.uses += 1
            r.lastUse = clock
            counts.reused += 1
            return r
        }
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let from = start & ~(page - 1)
        let to = (end + page - 1) & ~(page - 1)
        let pages = UnsafeMutableRawPointer(bitPattern: from)!
        let region: RDMAMemoryRegion
        do { region = try device.register(pages, length: Int(to - from)) } catch {
            // The locked-memory limit, most likely: the unused registrations go, and once more.
            for r in regions where r.owned && r.uses == 0 { evictLocked(r) }
            region = try device.register(pages, length: Int(to - from))
        }
        let r = Registration(start: from, end: to, region: region)
        r.uses = 1
        r.lastUse = clock
        regions.append(r)
        counts.registrations += 1
        trimLocked()
        return r
    }

    /// Registers the pages of `count` bytes at `p` now (if no registration covers them), so the
    /// READs of its pieces all find that one. A failure only means each piece registers its own.
    package func prepare(_ p: UnsafeMutableRawPointer, count: Int) {
        guard let r = try? acquire(p, count: count) else { return }
        release(r)
    }

    func release(_ r: Registration) {
        lock.withLock {
            r.uses -= 1
            if r.dropped && r.uses == 0 && isUsable { device.deregister(r.region) }
        }
    }

    /// The data in `r`'s memory did not match its CRC32C: the buffer's pages may have been
    /// unmapped and mapped again since it was registered (the registration pins the old ones),
    /// so it is dropped and the next READ there registers the pages anew.
    func invalidate(_ r: Registration) {
        lock.withLock {
            guard r.owned, regions.contains(where: { $0 === r }) else { return }
            dropLocked(r)
        }
    }

    /// Takes `r` out of the cache; it is deregistered now, or by the last READ that holds it.
    private func dropLocked(_ r: Registration) {
        regions.removeAll { $0 === r }
        r.dropped = true
        if r.uses == 0 && isUsable { device.deregister(r.region) }
    }

    /// Drops unused registration `r` to make room (counted).
    private func evictLocked(_ r: Registration) {
        dropLocked(r)
        counts.evicted += 1
    }

    /// Past `maxRegistrations` or `maxRegisteredBytes`: the least recently used unused go.
    private func trimLocked() {
        var bytes = regions.reduce(0) { $0 + ($1.owned ? Int($1.end - $1.start) : 0) }
        while regions.count > maxRegistrations || bytes > maxRegisteredBytes {
            guard let victim = regions.filter({ $0.uses == 0 && $0.owned }).min(by: { $0.lastUse < $1.lastUse }) else { return }
            bytes -= Int(victim.end - victim.start)
            evictLocked(victim)
        }
    }
}

/// One connection's RDMA: its queue pair, connected to the worker's, into which the worker
/// writes READ data. The client posts nothing on it; destroying it (`close`) guarantees that no
/// write lands in the caller's memory any more, so a connection that breaks, times out or lets
/// a hedged READ go closes it before its caller gets its buffer back.
final class RDMAChannel {
    let rdma: ClientRDMA
    let queuePair: any RDMAQueuePairDriver
    private(set) var closed = false

    init(rdma: ClientRDMA, queuePair: any RDMAQueuePairDriver) {
        self.rdma = rdma
        self.queuePair = queuePair
    }

    func close() {
        guard !closed else { return }
        closed = true
        // A forked child only forgets it: destroying it would destroy the parent's.
        guard rdma.isUsable else { return }
        queuePair.close()
    }

    deinit { close() }
}
