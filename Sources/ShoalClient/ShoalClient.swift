import ShoalCore
import ShoalSys
import ShoalTransport

/// How a client finds and talks to the cluster.
public struct ClientConfig: Sendable {
    public var workers: [Endpoint]
    public var secret: [UInt8]
    /// Connections per worker; a large read uses them all, each with up to `pipelineDepth` READs
    /// in flight (and no more than the worker allows). Replies come back in any order.
    public var connectionsPerWorker = 8
    public var pipelineDepth = 4
    public var timeoutMillis: Int32 = 10_000
    public var clientName = "shoal-client"
    /// Benchmarks only: count READ_NODATA replies from a worker running with `answerWithoutData`
    /// as answered (the buffer is left untouched) instead of failing them.
    public var acceptsNoData = false
    /// TLS on the data plane: the PEM file of the CA that signed the workers' certificates. Each
    /// worker's certificate must be valid for the address it is dialled at. nil: plain TCP, with
    /// every frame tagged under the session key instead.
    public var tlsCAFile: String?
    /// Benchmarks only: ask for frames without tags from a worker running with the switch
    /// `allowUntaggedFrames`, to measure what the tags cost. Never for service.
    public var untaggedFrames = false

    public init(workers: [Endpoint], secret: [UInt8]) {
        self.workers = workers
        self.secret = secret
    }
}

/// An object opened at one version: every read of it returns bytes of that version or fails.
public struct ShoalFile: Sendable, Equatable {
    public let object: ObjectRef
    public let version: ObjectVersion
    public let blockSize: UInt32
    /// The worker could not reach the store and gave the last version it knew.
    public let stale: Bool

    public init(object: ObjectRef, version: ObjectVersion, blockSize: UInt32, stale: Bool = false) {
        self.object = object
        self.version = version
        self.blockSize = blockSize
        self.stale = stale
    }

    public var size: UInt64 { version.size }

    /// The block of this version at `index`.
    public func block(_ index: UInt64) -> BlockKey {
        BlockKey(object: object, version: version, blockSize: blockSize, index: index)
    }

    /// The READ of `length` bytes at `offset`, cut at the end of its block (and of the object);
    /// nil past the end.
    public func readRequest(at offset: UInt64, length: UInt64) -> ReadRequest? {
        guard offset < size, let piece = BlockLayout(blockSize: UInt64(blockSize)).pieces(offset: offset, length: min(length, size - offset)).first
        else { return nil }
        return ReadRequest(block: block(piece.index), offset: piece.offsetInBlock, length: piece.length)
    }
}

/// The client core: synchronous and thread-free (blocking sockets and poll), so it is safe in a
/// process that forks. Routes each block to its owner, keeps connections per worker, and reads
/// large ranges as parallel, pipelined block requests straight into the caller's buffer.
public final class ShoalClient: @unchecked Sendable {
    public let config: ClientConfig
    /// Block → owner, over the workers given (each a member, its address its id).
    private let slots: Placement
    /// The workers in the order of the view's members (`slots` names them by that index).
    private let workers: [Endpoint]
    private let lock = ConditionLock()
    private var idle: [[WorkerConnection]]
    private let tls: TLSContext?

    public init(config: ClientConfig) throws(ShoalError) {
        guard !config.workers.isEmpty else { throw ShoalError(.badRequest, "no worker address given (e.g. 127.0.0.1:7070)") }
        guard !config.secret.isEmpty else { throw ShoalError(.badRequest, "no cluster secret given; workers refuse clients without it") }
        self.config = config
        if let ca = config.tlsCAFile {
            do { tls = try TLSContext.client(caFile: ca) } catch { throw ShoalError(.badRequest, error.message) }
        } else {
            tls = nil
        }
        let view = try MembershipView(epoch: 0, members: config.workers.map { Member(id: $0.description, address: $0.description) })
        slots = Placement(view: view)
        let byAddress = Dictionary(config.workers.map { ($0.description, $0) }, uniquingKeysWith: { a, _ in a })
        workers = view.members.map { byAddress[$0.address]! }
        idle = Array(repeating: [], count: workers.count)
    }

    deinit { idle.joined().forEach { $0.close() } }

    // MARK: connections

    private func connection(_ worker: Int) throws(ShoalError) -> WorkerConnection {
        if let c = lock.withLock({ idle[worker].popLast() }) { return c }
        let c = try WorkerConnection(endpoint: workers[worker], secret: config.secret, clientName: config.clientName,
                                     timeoutMillis: config.timeoutMillis, tls: tls, untaggedFrames: config.untaggedFrames)
        c.acceptsNoData = config.acceptsNoData
        return c
    }

    private func giveBack(_ c: WorkerConnection, _ worker: Int) {
        if c.isBroken { c.close(); return }
        lock.withLock {
            if idle[worker].count < config.connectionsPerWorker { idle[worker].append(c); return }
            c.close()
        }
    }

    private func metadataOwner(_ object: ObjectRef) -> Int {
        slots.owners(of: BlockID(hashing: Array(object.description.utf8))).owner ?? 0
    }

    /// The owner of a block, then its fallback.
    public func owners(of block: BlockKey) -> [Endpoint] {
        let (owner, fallback) = slots.owners(of: block.id)
        return [owner, fallback].compactMap { $0 }.map { workers[$0] }
    }

    // MARK: API

    /// The object's size and etag as the cluster sees it (`revalidate` bypasses the worker's TTL).
    public func stat(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> ShoalFile {
        try object.validate()
        let worker = metadataOwner(object)
        let c = try connection(worker)
        let reply: StatReply
        do {
            reply = try c.stat(object, revalidate: revalidate)
        } catch {
            // A status reply leaves the connection usable; anything else may have broken it.
            if error.code == .connectionFailed || error.code == .timeout || error.code == .badRequest || error.code == .tampered {
                c.close()
            } else {
                giveBack(c, worker)
            }
            throw error
        }
        giveBack(c, worker)
        let bs = UInt64(reply.blockSize)
        guard bs >= BlockLayout.minBlockSize, bs <= BlockLayout.maxBlockSize else {
            throw ShoalError(.badRequest, "worker \(workers[worker]) reported a block size of \(bs) bytes, outside 64 KiB-16 MiB")
        }
        guard !reply.version.etag.isEmpty else {
            throw ShoalError(.internal, "worker \(workers[worker]) gave \(object) no version")
        }
        return ShoalFile(object: object, version: reply.version, blockSize: reply.blockSize, stale: reply.stale)
    }

    /// Opens an object at its current version.
    public func open(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> ShoalFile {
        try stat(object, revalidate: revalidate)
    }

    /// Reads up to `buffer.count` bytes at `offset` into `buffer`; returns the count (short at the end).
    public func read(_ file: ShoalFile, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ShoalError) -> Int {
        guard offset < file.size, buffer.count > 0, let base = buffer.baseAddress else { return 0 }
        let length = min(UInt64(buffer.count), file.size - offset)
        let layout = BlockLayout(blockSize: UInt64(file.blockSize))
        let pieces = layout.pieces(offset: offset, length: length)
        var byWorker = Array(repeating: [BlockPiece](), count: workers.count)
        for p in pieces {
            byWorker[slots.owners(of: file.block(p.index).id).owner ?? 0].append(p)
        }
        try fetch(byWorker, file: file, into: base)
        return Int(length)
    }

    /// Reads a whole range into a new array (convenience for small reads and tools).
    public func read(_ file: ShoalFile, offset: UInt64, length: Int) throws(ShoalError) -> [UInt8] {
        let n = Int(min(UInt64(length), file.size > offset ? file.size - offset : 0))
        var out = [UInt8](repeating: 0, count: n)
        guard n > 0 else { return out }
        let result = out.withUnsafeMutableBytes { p in Result { () throws(ShoalError) -> Int in try read(file, at: offset, into: p) } }
        return Array(out.prefix(try result.get()))
    }

    /// Reads every worker's pieces at once: each worker's over up to `connectionsPerWorker`
    /// connections, all of them in one poll set. Each connection keeps up to `pipelineDepth`
    /// READs in flight and gets the next piece of its worker as soon as one is answered
    /// (whichever connection `poll` finds ready first, whichever of its READs the reply names),
    /// so neither a slow fill nor a slow worker stalls the rest. Every reply lands straight in
    /// its place in the caller's buffer.
    private func fetch(_ byWorker: [[BlockPiece]], file: ShoalFile, into base: UnsafeMutableRawPointer) throws(ShoalError) {
        var lanes: [(worker: Int, connection: WorkerConnection)] = []
        defer { lanes.forEach { giveBack($0.connection, $0.worker) } }
        for (worker, pieces) in byWorker.enumerated() where !pieces.isEmpty {
            for _ in 0..<min(config.connectionsPerWorker, pieces.count) { lanes.append((worker, try connection(worker))) }
        }
        var next = Array(repeating: 0, count: byWorker.count)
        var firstError: ShoalError?

        /// Sends the next piece of the lane's worker; false when that worker has none left.
        func send(_ lane: Int) throws(ShoalError) -> Bool {
            let worker = lanes[lane].worker
            guard next[worker] < byWorker[worker].count else { return false }
            let p = byWorker[worker][next[worker]]
            next[worker] += 1
            let request = ReadRequest(block: file.block(p.index), offset: p.offsetInBlock, length: p.length)
            _ = try lanes[lane].connection.sendRead(request, into: base + Int(p.offsetInRange), length: Int(p.length))
            return true
        }
        do throws(ShoalError) {
            for lane in lanes.indices {
                let depth = max(1, min(config.pipelineDepth, lanes[lane].connection.maxInFlight))
                for _ in 0..<depth { guard try send(lane) else { break } }
            }
            var remaining = byWorker.reduce(0) { $0 + $1.count }
            while remaining > 0 {
                let busy = lanes.indices.filter { lanes[$0].connection.inFlight > 0 }
                // One connection waiting, or replies already received: no poll needed.
                let staged = busy.filter { lanes[$0].connection.hasBufferedReply }
                let ready = busy.count == 1 ? busy : !staged.isEmpty ? staged
                    : try readable(busy.map { lanes[$0].connection.socket }, busy.map { lanes[$0].worker }).map { busy[$0] }
                for lane in ready {
                    let (_, result) = try lanes[lane].connection.receiveNext()
                    // A status reply (or a bad checksum, read in full) leaves the connection in step.
                    if case .failure(let error) = result { firstError = firstError ?? error }
                    remaining -= 1
                    _ = try send(lane)
                }
            }
        } catch {
            lanes.forEach { $0.connection.close() }
            lanes.removeAll()
            throw error
        }
        if let firstError { throw firstError }
    }

    private func readable(_ sockets: [TCPSocket], _ waitingOn: [Int]) throws(ShoalError) -> [Int] {
        let ready: [Int]
        do { ready = try TCPSocket.readable(sockets, timeoutMillis: Int32(min(Int64(config.timeoutMillis) * 3, Int64(Int32.max)))) } catch {
            throw ShoalError(.connectionFailed, "poll on worker connections failed: \(error)")
        }
        guard !ready.isEmpty else {
            let silent = Set(waitingOn).sorted().map { workers[$0].description }
            throw ShoalError(.timeout, "\(silent.count > 1 ? "workers" : "worker") \(silent.joined(separator: ", ")) sent nothing in time")
        }
        return ready
    }
}
