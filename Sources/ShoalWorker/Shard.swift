#if canImport(Glibc)
import Glibc
#endif
import Logging
import ShoalCore
import ShoalStore
import ShoalIO
import ShoalSys
import Synchronization

/// What other threads tell a shard (through its mailbox and eventfd).
enum ShardMessage: Sendable {
    /// A fill job finished READ op `op` (generation `generation`); the lease is parked again.
    case filled(op: Int, generation: UInt32, Result<FilledRange, ShoalError>)
    /// A fill thread fetched a warm's block and wrote it to the cache (success), or could not
    /// cache it; READ op `op`'s lease is back in the pool, or (`chained`) the fill thread goes on
    /// with the next READs of its warm lane in it (`laneAnswer`, then `chainEnded`).
    case warmed(op: Int, generation: UInt32, Result<FilledRange, ShoalError>, chained: Bool)
    /// A READ of a warm lane that a fill thread ran after the one before, with no op: its answer.
    case laneAnswer(connection: Int, generation: UInt32, requestID: UInt32, Result<FilledRange, ShoalError>)
    /// The next READ of a warm lane, for the shard to start as any READ (the fill thread that
    /// ended the one before may not run it: readers' jobs wait, or the warm-up queue is closed).
    case laneStart(WaitingRead)
    /// A fill thread is done running a warm lane's READs; its lease is back in the pool.
    case chainEnded
    /// A fill of READ op `op` has this many bytes of its block in the lease, from the block's
    /// start, checked against the version: the reply may start before the block is whole.
    case fillProgress(op: Int, generation: UInt32, Int)
    /// A LIST answered on a fill thread: the reply's type and payload, or the error.
    case answer(connection: Int, generation: UInt32, requestID: UInt32, FrameType, Result<[UInt8], ShoalError>)
    /// A version a fill thread asked the store for, for a STAT or (with its READ) a READ by name.
    case version(connection: Int, generation: UInt32, requestID: UInt32, ReadRequest?, Result<StatReply, ShoalError>)
    /// A queue pair a fill thread made for a connection's RDMA_CONNECT, or why not.
    case rdmaConnected(connection: Int, generation: UInt32, requestID: UInt32, QueueHandoff)
    /// A lease came free somewhere: requests waiting for one may go on.
    case leaseFreed
    /// Report the hits counted so far now (the admin port is asked for dataset figures).
    case flushStats(Countdown)
    case stop
}

/// A queue pair (or why not) passed from the fill thread that made it to its connection's shard,
/// which alone uses it from then on.
struct QueueHandoff: @unchecked Sendable {
    let result: Result<RDMAQueue, RDMAError>
    init(_ result: Result<RDMAQueue, RDMAError>) { self.result = result }
}

/// Counts down to zero as shards answer; the asker waits for it (bounded).
final class Countdown: @unchecked Sendable {
    private let lock = ConditionLock()
    private var left: Int

    init(_ n: Int) { left = n }

    func done() {
        lock.withLock { left -= 1 }
        lock.broadcast()
    }

    func wait(timeoutNanos: UInt64) {
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        while left > 0 && monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
        lock.unlock()
    }
}

/// One io shard: a thread with one io_uring that accepts connections, receives their requests,
/// reads the cache straight into leased registered buffers and sends replies from them, in
/// whatever order they complete. Nothing here blocks: misses, STATs that go to the store and
/// cache writes go to the fill threads and come back as messages. `user_data` names each
/// operation as (kind, table index, generation), so nothing is allocated per operation and a
/// completion for a connection or operation that is gone is recognised and dropped.
final class Shard: @unchecked Sendable {
    let index: Int
    unowned let plane: DataPlane
    private var ring: ShardRing!
    private let wake: EventFD
    private let wakeBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private let mailLock = ConditionLock()
    private var mail: [ShardMessage] = []
    private var mailScratch: [ShardMessage] = []
    private var waitersFlag = false
    private let started = ConditionLock()
    private var startResult: Result<Void, SysError>?
    private var finished = false

    private var connections = SlotTable<ShardConnection>()
    private var ops = SlotTable<ReadOp>()
    /// Requests waiting for a buffer, oldest first.
    private var waiting: [WaitingRead] = []
    private var waitingHead = 0
    /// Fill and STAT jobs sent out and not yet answered.
    private var jobsOut = 0
    /// Connections whose warm lane's READ just ended (`ShardConnection.lane`): each starts its
    /// next one when the turn's completions and mail are done.
    private var lanesEnded: [(slot: Int, generation: UInt32)] = []
    /// Fill threads running warm lanes' READs one after another (`chainEnded` to come).
    private var chainsOut = 0
    private var stopping = false
    private var actions: [ServerAction] = []
    /// Plaintext out of TLS records, for the state machine.
    private let plaintext = UnsafeMutableRawPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    private var lastSweep: UInt64 = 0
    /// Hits per object since the last sweep, reported to the dataset counts in one go.
    /// Hits per object since the last report, by the hash of the bytes naming the object.
    private var hitTally: [BlockID: HitTally] = [:]
    /// Connections with RDMA writes whose completions have not come: polled every turn of the
    /// loop, which then waits microseconds instead of half a second.
    private var rdmaBusy: [ShardConnection] = []
    /// READ data waiting for room on the device (`maxTransfers` writes out) or on its queue pair,
    /// oldest first: written as writes complete.
    private var rdmaWaiting: [RDMAReply] = []

    private var service: BlockService { plane.service }
    private var logger: Logger { plane.logger }

    enum Kind: UInt64 {
        case accept = 1, receive, send, diskFirst, diskSecond, wake, cancel
    }

    static func userData(_ kind: Kind, _ index: Int, _ generation: UInt32) -> UInt64 {
        kind.rawValue << 56 | UInt64(index & 0xFF_FFFF) << 32 | UInt64(generation)
    }

    init(index: Int, plane: DataPlane) throws(SysError) {
        self.index = index
        self.plane = plane
        wake = try EventFD()
        actions.reserveCapacity(16)
    }

    deinit {
        wakeBuffer.deallocate()
        plaintext.deallocate()
    }

    // MARK: thread

    func start() throws(SysError) {
        try OSThread.spawn(name: "shoal-shard-\(index)") { [self] in run() }
        started.lock()
        while startResult == nil { _ = started.wait() }
        let r = startResult!
        started.unlock()
        try r.get()
    }

    private func run() {
        do throws(SysError) {
            // It polls the RDMA device's queue pairs: on the device's NUMA node, with the buffers.
            if let node = plane.pool.numaNode { NUMA.runOn(node: node) }
            // The ring is made on this thread: with SINGLE_ISSUER only it may submit.
            ring = try ShardRing(entries: 1024)
            try plane.pool.register(with: ring)
            try ring.setUpProvidedBuffers(count: 256, size: 16 * 1024)
            try ring.acceptMultishot(fd: plane.listeners[index].fd, userData: Shard.userData(.accept, 0, 0))
            try ring.read(fd: wake.fd, into: wakeBuffer, count: 8, userData: Shard.userData(.wake, 0, 0))
        } catch {
            started.withLock { startResult = .failure(error) }
            started.broadcast()
            return
        }
        started.withLock { startResult = .success(()) }
        started.broadcast()
        loop()
        ring = nil
        started.withLock { finished = true }
        started.broadcast()
    }

    private func loop() {
        while true {
            do { try ring.submitAndWait(timeoutNanos: rdmaBusy.isEmpty && rdmaWaiting.isEmpty ? 500_000_000 : 20_000) } catch {
                logger.error("io shard stopped: its ring failed", metadata: ["shard": "\(index)", "error": "\(error)"])
                return
            }
            ring.drain { ud, res, flags in completion(ud, res, flags) }
            takeMail()
            advanceLanes()
            if !rdmaBusy.isEmpty || !rdmaWaiting.isEmpty { pollRDMA() }
            let now = monotonicNanos()
            if now - lastSweep > 250_000_000 {
                lastSweep = now
                sweep(now)
            }
            if stopping && connections.isEmpty && ops.isEmpty && jobsOut == 0 && chainsOut == 0 {
                // The last reads count too (the hot prefixes are saved after the plane stops).
                flushHits()
                return
            }
        }
    }

    func requestStop() { post(.stop) }

    func waitUntilStopped(timeoutNanos: UInt64) {
        let deadline = monotonicNanos() + timeoutNanos
        started.lock()
        while !finished && startResult != nil && monotonicNanos() < deadline {
            if case .failure = startResult { break }
            _ = started.wait(untilNanos: deadline)
        }
        started.unlock()
    }

    /// Posts a message from any thread.
    func post(_ message: ShardMessage) {
        mailLock.withLock { mail.append(message) }
        wake.signal()
    }

    var hasWaiters: Bool { mailLock.withLock { waitersFlag } }

    private func setWaiters(_ on: Bool) { mailLock.withLock { waitersFlag = on } }

    // MARK: completions

    private func completion(_ ud: UInt64, _ res: Int32, _ flags: UInt32) {
        guard let kind = Kind(rawValue: ud >> 56) else { return }
        let index = Int((ud >> 32) & 0xFF_FFFF)
        let generation = UInt32(truncatingIfNeeded: ud)
        switch kind {
        case .accept:
            if res >= 0 { accepted(res) }
            if !ShardRing.hasMore(flags) {
                if !stopping, res != -EINVAL, res != -EBADF { armAccept() }
            }
        case .receive:
            received(index, generation, res, flags)
        case .send:
            if ShardRing.isNotification(flags) {
                notified(index, generation)
            } else {
                sent(index, generation, res, zeroCopy: ShardRing.hasMore(flags))
            }
        case .diskFirst, .diskSecond:
            diskRead(index, generation, res)
        case .cancel:
            break  // the cancelled operation's own completion says the rest
        case .wake:
            do { try ring.read(fd: wake.fd, into: wakeBuffer, count: 8, userData: Shard.userData(.wake, 0, 0)) } catch {
                logger.error("io shard cannot re-arm its wake-up", metadata: ["error": "\(error)"])
            }
        }
    }

    private func armAccept() {
        do {
            try ring.acceptMultishot(fd: plane.listeners[index].fd, userData: Shard.userData(.accept, 0, 0))
        } catch {
            logger.error("io shard cannot accept", metadata: ["error": "\(error)"])
        }
    }

    private func takeMail() {
        mailLock.withLock { swap(&mail, &mailScratch) }
        defer { mailScratch.removeAll(keepingCapacity: true) }
        for m in mailScratch {
            switch m {
            case .filled(let op, let generation, let result):
                jobsOut -= 1
                filled(op, generation, result)
            case .warmed(let op, let generation, let result, let chained):
                jobsOut -= 1
                if chained { chainsOut += 1 }
                warmed(op, generation, result)
            case .laneAnswer(let c, let generation, let id, let result):
                guard let conn = connection(c, generation), conn.isOpen else { continue }
                answerWarm(conn, id, result)
            case .laneStart(let read):
                startRead(read)
            case .chainEnded:
                chainsOut -= 1
                serveWaiting()
            case .fillProgress(let op, let generation, let bytes):
                stream(op, generation, upTo: bytes)
            case .version(let c, let generation, let id, let read, let result):
                jobsOut -= 1
                guard let conn = connection(c, generation), conn.isOpen else { continue }
                versionResolved(conn, id, read, result)
                flush(conn)
            case .answer(let c, let generation, let id, let type, let result):
                jobsOut -= 1
                guard let conn = connection(c, generation), conn.isOpen else { continue }
                switch result {
                case .success(let body): enqueueSmall(conn, conn.machine.encodeFrame(type, id: id, body: body), requestID: id)
                case .failure(let e): replyError(conn, type, id, e)
                }
                flush(conn)
            case .rdmaConnected(let c, let generation, let id, let made):
                jobsOut -= 1
                rdmaConnected(c, generation, id, made.result)
            case .leaseFreed:
                serveWaiting()
            case .flushStats(let countdown):
                flushHits()
                countdown.done()
            case .stop:
                stopping = true
                for c in connections.all { kill(c) }
                serveWaiting()
            }
        }
    }

    // MARK: connections

    private func connection(_ slot: Int, _ generation: UInt32) -> ShardConnection? {
        connections.value(slot, generation)
    }

    private func accepted(_ fd: Int32) {
        guard !stopping else {
            Sockets.close(fd)
            return
        }
        switch plane.admit(fd: fd) {
        case .full:
            refuse(fd)
        case .admitted(let id):
            do { try Sockets.setNoDelay(fd) } catch {
                plane.release(id)
                Sockets.close(fd)
                logger.warning("closing a new connection", metadata: ["error": "\(error)"])
                return
            }
            var tls: TLSEngine?
            if let context = plane.config.tls {
                do { tls = try TLSEngine(context: context) } catch {
                    plane.release(id)
                    Sockets.close(fd)
                    logger.error("cannot start TLS for a connection", metadata: ["error": "\(error)"])
                    return
                }
                if plane.tlsReported.firstTime() {
                    logger.notice("TLS connection: the io shards run TLS in user space (OpenSSL, memory buffers), copying each reply once into its records")
                }
            }
            let conn = newConnection(fd: fd, place: id, tls: tls)
            service.metrics.connections.increment()
            armReceive(conn)
        }
    }

    /// A connection over `maxConnections` when every place is trusted: told why in an ERROR
    /// frame it reads in place of the handshake's CHALLENGE, then closed. It holds no place; a
    /// flood beyond `maxRefusing` at once is closed without a word.
    private func refuse(_ fd: Int32) {
        let max = plane.config.maxConnections
        service.metrics.connectionsRefused.increment()
        plane.refusedLog.log(logger, .warning, "refused a connection: the worker is full", ["maxConnections": "\(max)"])
        guard refusing < Shard.maxRefusing else {
            Sockets.close(fd)
            return
        }
        let message = Array("worker is full: \(max) connections (maxConnections); retry later, or raise maxConnections in the worker's config".utf8)
        let farewell = FrameHeader(type: .error, status: .shuttingDown, requestID: 0, payloadLength: UInt32(message.count)).bytes + message
        let conn = newConnection(fd: fd, place: 0, tls: nil)
        conn.refused = true
        refusing += 1
        conn.queue.append(OutFrame(copying: farewell, requestID: nil))
        closeAfterFlush(conn)
    }

    private static let maxRefusing = 64
    private var refusing = 0

    private func newConnection(fd: Int32, place: UInt64, tls: TLSEngine?) -> ShardConnection {
        let config = plane.config
        var machineConfig = ServerConnection.Config(secret: config.secret, blockSize: service.blockSize) { keys in
            try? FrameAuthenticator(keys: keys, role: .worker)
        }
        machineConfig.allowsUntaggedFrames = config.allowsUntaggedFrames
        machineConfig.channelAuthenticated = tls != nil
        machineConfig.maxInFlight = config.maxInFlight
        let slot = connections.insert { slot, generation in
            ShardConnection(fd: fd, slot: slot, generation: generation, place: place, machine: ServerConnection(machineConfig), tls: tls,
                            deadline: monotonicNanos() + config.handshakeTimeoutNanos)
        }
        return connections[slot]!
    }

    /// Arms the connection's multishot receive: it stays armed while the state machine wants
    /// input, and is cancelled when it does not (`holdReceive`): back-pressure.
    private func armReceive(_ conn: ShardConnection) {
        guard !conn.receiving, conn.state == .open || conn.state == .draining else { return }
        do {
            try ring.receiveMultishot(fd: conn.fd, userData: Shard.userData(.receive, conn.slot, conn.generation))
            conn.receiving = true
        } catch {
            logger.error("cannot receive on a connection", metadata: ["error": "\(error)"])
            kill(conn)
        }
    }

    /// The state machine holds requests at its limit: stop the receive, so the client's bytes
    /// wait in the kernel and its TCP window fills. What arrives before the cancel takes effect
    /// (a few buffers at most) waits in the state machine.
    private func holdReceive(_ conn: ShardConnection) {
        guard conn.receiving, !conn.cancellingReceive else { return }
        do {
            try ring.cancel(Shard.userData(.receive, conn.slot, conn.generation), userData: Shard.userData(.cancel, conn.slot, conn.generation))
            conn.cancellingReceive = true
        } catch {
            logger.error("cannot pause receiving on a connection", metadata: ["error": "\(error)"])
            kill(conn)
        }
    }

    /// After input: the receive stays armed while more is wanted, and is held otherwise.
    private func receiveIfWanted(_ conn: ShardConnection) {
        guard conn.state == .open else { return }
        if conn.machine.wantsInput { armReceive(conn) } else { holdReceive(conn) }
    }

    private func received(_ slot: Int, _ generation: UInt32, _ res: Int32, _ flags: UInt32) {
        let buffer = ShardRing.providedBufferID(flags)
        defer { if let buffer { ring.recycle(buffer) } }
        guard let conn = connection(slot, generation) else { return }
        if !ShardRing.hasMore(flags) {
            conn.receiving = false
            conn.cancellingReceive = false
        }
        if res == -ENOBUFS {
            // Every receive buffer is in use this instant: try again on the next pass.
            conn.receiveLater = true
            return
        }
        if res == -ECANCELED {
            // Held for back-pressure; the requests may have drained meanwhile, or the connection
            // is saying goodbye and reads what the client still sends.
            if conn.state == .draining { armReceive(conn) } else { receiveIfWanted(conn) }
            return
        }
        guard res > 0, let buffer else {
            kill(conn)
            finalizeIfDone(conn)
            return
        }
        let bytes = UnsafeRawBufferPointer(start: ring.providedBuffer(buffer), count: Int(res))
        switch conn.state {
        case .draining:
            armReceive(conn)  // discard until the client closes (a no-op while armed)
            return
        case .flushing:
            return
        case .dead:
            finalizeIfDone(conn)
            return
        case .open:
            break
        }
        if let tls = conn.tls {
            if !conn.sawFirstByte, bytes.first == FrameHeader.firstByte {
                // A client without TLS opens with a Shoal frame: tell it, in a frame it can read.
                let message = Array("this worker requires TLS: give the client the cluster's CA file (tlsCAFile, --tls-ca or SHOAL_TLS_CA_FILE)".utf8)
                service.metrics.error(.unauthenticated)
                logClosing("closing a connection without TLS to a TLS worker", [:])
                conn.queue.append(OutFrame(copying: FrameHeader(type: .error, status: .unauthenticated, requestID: 0,
                                                                payloadLength: UInt32(message.count)).bytes + message, requestID: nil))
                closeAfterFlush(conn)
                return
            }
            conn.sawFirstByte = true
            receiveTLS(conn, tls, bytes)
        } else {
            conn.machine.receive(bytes, nonce: nonce, into: &actions)
            perform(conn)
        }
        receiveIfWanted(conn)
        flush(conn)
    }

    private func receiveTLS(_ conn: ShardConnection, _ tls: TLSEngine, _ bytes: UnsafeRawBufferPointer) {
        switch tls.feed(bytes) {
        case .failed(let reason):
            service.metrics.error(.unauthenticated)
            logClosing("closing a connection whose TLS failed", ["error": "\(reason)"])
            queueTLSOutput(conn, tls)
            closeAfterFlush(conn)
            return
        case .closed:
            kill(conn)
            return
        case .handshaking:
            queueTLSOutput(conn, tls)
            return
        case .established:
            break
        }
        while conn.state == .open {
            guard let n = tls.readPlaintext(into: plaintext, count: 64 * 1024) else {
                kill(conn)
                return
            }
            if n == 0 { break }
            conn.machine.receive(UnsafeRawBufferPointer(start: plaintext, count: n), nonce: nonce, into: &actions)
            perform(conn)
        }
        queueTLSOutput(conn, tls)
    }

    private func nonce() -> [UInt8]? {
        do { return try secureRandomBytes(MutualAuth.nonceSize) } catch {
            logger.error("refusing a connection: the worker cannot authenticate clients without a random source", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Carries out the state machine's actions.
    private func perform(_ conn: ShardConnection) {
        var i = 0
        while i < actions.count {
            let action = actions[i]
            i += 1
            switch action {
            case .send(let bytes):
                enqueueSmall(conn, bytes, requestID: nil)
            case .established:
                plane.trust(conn.place)
                conn.deadline = nil
            case .close(let bytes, let status, let reason):
                service.metrics.error(status)
                logClosing("closing a connection after a protocol error", ["error": "\(reason)"])
                enqueueSmall(conn, bytes, requestID: nil)
                closeAfterFlush(conn)
            case .serve(let id, let request):
                serve(conn, id, request)
            }
        }
        actions.removeAll(keepingCapacity: true)
    }

    private func logClosing(_ message: Logger.Message, _ metadata: Logger.Metadata) {
        plane.protocolErrorLog.log(logger, .info, message, metadata)
    }

    // MARK: requests

    private func serve(_ conn: ShardConnection, _ id: UInt32, _ request: WorkerRequest) {
        switch request {
        case .stat(let req):
            resolveVersion(conn, id, req, then: nil)
        case .list(let req):
            // The store is asked on a fill thread, never on the io shard's.
            jobsOut += 1
            let (service, slot, generation) = (self.service, conn.slot, conn.generation)
            plane.fillPool.submit { [self] _ in
                let result = Result { () throws(ShoalError) -> [UInt8] in ListReply.encode(try service.list(req)) }
                post(.answer(connection: slot, generation: generation, requestID: id, .listReply, result))
            }
        case .members:
            let view = service.members?.source.current(force: false).view ?? (try! MembershipView(epoch: 0, members: []))
            enqueueSmall(conn, conn.machine.encodeFrame(.membersReply, id: id, body: MembersReply.encode(view)), requestID: id)
        case .rdmaConnect(let peer):
            connectRDMA(conn, id, peer)
        case .read(let req) where req.resolvesVersion:
            // A READ by name: its version first, as for a STAT.
            service.metrics.readsByName.increment()
            do { try req.validate() } catch {
                replyError(conn, .readReply, id, error)
                return
            }
            resolveVersion(conn, id, StatRequest(object: req.block.object), then: req)
        case .read(let req):
            do { try service.check(req) } catch {
                replyError(conn, .readReply, id, error)
                return
            }
            if let d = req.rdma, d.length < req.length {
                replyError(conn, .readReply, id, ShoalError(.badRequest, "the READ's RDMA descriptor names \(d.length) bytes where it asks for \(req.length)"))
                return
            }
            if req.isProbe {
                // Is it cached? The index alone answers: nothing is read, filled or counted.
                if service.holds(req) {
                    enqueueNoData(conn, id: id, crc: 0, length: 0, origin: .cache)
                } else {
                    replyError(conn, .readReply, id, ShoalError(.notFound, "block \(req.index) of \(req.block.object) is not cached on this worker"))
                }
                return
            }
            if req.isFillOnly && req.length == 0 && service.holds(req) {
                // A warm (or a hand-over push) of a block the index holds: cached already, so
                // the index answers, as for a probe; nothing is read or filled.
                tallyWarmed(req)
                enqueueNoData(conn, id: id, crc: 0, length: 0, origin: .cache)
                return
            }
            var read = WaitingRead(connection: conn.slot, generation: conn.generation, requestID: id, request: req)
            guard req.isFillOnly && !req.isPush else { return startRead(read) }
            // A warm's: one at a time per connection, the next as soon as one ends.
            read.inLane = true
            if let now = conn.lane.add(read) { startRead(now) }
        }
    }

    /// The version `stat` asks for: from the metadata cache at once, else from the store on a
    /// fill thread. Then a STAT is answered, or `read` (a READ by name) is served at it.
    private func resolveVersion(_ conn: ShardConnection, _ id: UInt32, _ stat: StatRequest, then read: ReadRequest?) {
        do throws(ShoalError) {
            if let reply = try service.cachedStat(stat) {
                versionResolved(conn, id, read, .success(reply))
                return
            }
        } catch {
            versionResolved(conn, id, read, .failure(error))
            return
        }
        jobsOut += 1
        let (service, slot, generation) = (self.service, conn.slot, conn.generation)
        plane.fillPool.submit { [self] _ in
            let result = Result { () throws(ShoalError) -> StatReply in try service.stat(stat) }
            post(.version(connection: slot, generation: generation, requestID: id, read, result))
        }
    }

    private func versionResolved(_ conn: ShardConnection, _ id: UInt32, _ read: ReadRequest?, _ result: Result<StatReply, ShoalError>) {
        switch (result, read) {
        case (.failure(let e), _): replyError(conn, read == nil ? .statReply : .readReply, id, e)
        case (.success(let reply), nil): enqueueSmall(conn, conn.machine.encodeFrame(.statReply, id: id, body: reply.encoded), requestID: id)
        case (.success(let reply), let read?): serveByName(conn, id, read, reply)
        }
    }

    /// Answers the version, then serves block 0 of it as any READ (cache, DRAM tier or fill).
    private func serveByName(_ conn: ShardConnection, _ id: UInt32, _ req: ReadRequest, _ reply: StatReply) {
        enqueueSmall(conn, conn.machine.encodeFrame(.statReply, id: id, body: reply.encoded), requestID: nil)
        let length = min(UInt64(req.length), reply.version.size, UInt64(reply.blockSize))
        guard length > 0 else {
            // An empty object: its (empty) bytes and their CRC.
            var crc = [UInt8]()
            crc.appendLE(CRC32C.checksum([]))
            enqueueSmall(conn, conn.machine.encodeFrame(.readReply, id: id, body: crc), requestID: id)
            return
        }
        let block = BlockKey(object: req.block.object, version: reply.version, blockSize: reply.blockSize, index: 0)
        let real = ReadRequest(block: block, offset: 0, length: UInt32(length), epoch: req.epoch)
        do { try service.check(real) } catch {
            replyError(conn, .readReply, id, error)
            return
        }
        startRead(WaitingRead(connection: conn.slot, generation: conn.generation, requestID: id, request: real))
    }

    private func replyError(_ conn: ShardConnection, _ type: FrameType, _ id: UInt32, _ error: ShoalError) {
        service.metrics.error(error.code)
        enqueueSmall(conn, conn.machine.errorReply(type, id: id, error), requestID: id)
    }

    /// Starts a READ with a lease, or queues it until one comes free (the connection's share
    /// used up, or none free).
    private func startRead(_ w: WaitingRead) {
        guard let conn = connection(w.connection, w.generation), conn.isOpen else { return }
        if !w.bypassTier, let tier = plane.tier, !w.request.isFillOnly, fromTier(conn, w, tier) { return }
        let underShare = conn.leases < plane.config.leasesPerConnection
        guard underShare, let lease = plane.pool.take() else {
            if waitingHead == waiting.count { setWaiters(true) }
            var queued = w
            queued.starved = underShare
            waiting.append(queued)
            plane.noteWaiting(1, starved: underShare)
            return
        }
        conn.leases += 1
        let li = plane.park.park(lease)
        var read = ReadOp(connection: w.connection, connectionGeneration: w.generation, requestID: w.requestID, request: w.request, lease: li)
        read.inLane = w.inLane
        let op = newOp(read)
        let bufferSize = plane.pool.bufferSize
        let range = Int(w.request.offset)..<Int(w.request.offset) + Int(w.request.length)
        if !service.serveFromMemory, let plan = service.cache.plan(id: w.request.id, range: range.isEmpty ? nil : range, capacity: bufferSize) {
            let base = plane.pool.bufferBase(li)
            let file = service.cache.file(for: plan)
            if FaultInjection.affects(file.path) {
                toFill(op)
                return
            }
            if !submit(plan, file: file, into: base, bufferIndex: li, op: op) { toFill(op) }
            return
        }
        toFill(op)
    }

    /// Submits the reads of `plan` for op `op` into the buffer at `base` (fixed buffer
    /// `bufferIndex`). False when not even the first could be submitted. When only the second
    /// fails, the first completes into an op marked `submitFailed`, which then takes the slow way.
    private func submit(_ plan: ReadPlan, file: FileHandle, into base: UnsafeMutableRawPointer, bufferIndex: Int, op: Int) -> Bool {
        ops[op]!.plan = plan
        for step in 0..<2 {
            let kind = step == 0 ? Kind.diskFirst : Kind.diskSecond
            guard let read = step == 0 ? plan.first : plan.second else { break }
            do {
                try ring.readFixed(file: file, buffer: base + read.bufferOffset, count: read.count, offset: read.fileOffset,
                                   bufferIndex: bufferIndex, userData: Shard.userData(kind, op, ops.generation(op)))
                ops[op]!.pending += 1
            } catch {
                logger.warning("cannot submit a cache read", metadata: ["error": "\(error)"])
                guard ops[op]!.pending > 0 else { return false }
                ops[op]!.submitFailed = true
                break
            }
        }
        return true
    }

    /// The DRAM tier: serves a hit with no disk read, or loads a hot block into a tier slot with
    /// one whole-block read and serves this request from it. False: go on the usual way.
    private func fromTier(_ conn: ShardConnection, _ w: WaitingRead, _ tier: MemoryTier) -> Bool {
        let request = w.request
        let key = request.keyBytes
        let hit = key.withUnsafeBytes { tier.lookup(request.id, key: $0) }
        if let hit {
            replyFromTier(conn, w, hit, tier)
            return true
        }
        // With serveFromMemory, blocks enter the tier from their fill, never from the disks.
        guard !service.serveFromMemory, tier.recordAccess(request.id),
              let plan = service.cache.plan(id: request.id, range: nil, capacity: plane.pool.bufferSize), plan.second == nil else { return false }
        let file = service.cache.file(for: plan)
        // A slot as small as the record: whole-block reads land at the slot's start.
        guard !FaultInjection.affects(file.path),
              let slot = tier.beginLoad(request.id, key: key.array, bytes: plan.first.bufferOffset + plan.first.count) else { return false }
        let (base, fixedIndex) = plane.pool.tierSlot(slot, of: tier)
        var op = ReadOp(connection: w.connection, connectionGeneration: w.generation, requestID: w.requestID, request: request, lease: -1)
        op.tierSlot = slot
        let i = newOp(op)
        guard submit(plan, file: file, into: base, bufferIndex: fixedIndex, op: i) else {
            freeOp(i)
            tier.abortLoad(slot: slot)
            return false
        }
        return true
    }

    private func replyFromTier(_ conn: ShardConnection, _ w: WaitingRead, _ hit: TierHit, _ tier: MemoryTier) {
        let request = w.request
        let data = plane.pool.tierSlot(hit.slot, of: tier).base + BlockCache.dataOffset
        guard hit.length == request.expectedLength, Int(request.offset) + Int(request.length) <= hit.length else {
            plane.tier?.unpin(hit.slot)
            replyError(conn, .readReply, w.requestID, ShoalError(.internal, "block \(request.block) in memory holds \(hit.length) bytes; not served"))
            return
        }
        recordHit(request)
        let crc = BlockService.rangeCRC(request, blockLength: hit.length, blockCRC: hit.crc, data: data)
        if service.answerWithoutData {
            enqueueNoData(conn, id: w.requestID, crc: crc, length: Int(request.length), origin: .cache)
            plane.tier?.unpin(hit.slot)
        } else {
            sendData(conn, request, id: w.requestID, crc: crc, data: UnsafeRawBufferPointer(start: data + Int(request.offset), count: Int(request.length)),
                     origin: .cache, after: .unpinTier(hit.slot))
        }
        flush(conn)
    }

    /// A tier load finished: the block becomes visible and this request is served from it, or
    /// (a bad or vanished record) the slot is given up and the request goes the usual way.
    private func tierLoaded(_ op: Int, _ r: ReadOp, _ plan: ReadPlan) {
        guard let tier = plane.tier else { return }
        freeOp(op)
        let (base, _) = plane.pool.tierSlot(r.tierSlot, of: tier)
        let retry = WaitingRead(connection: r.connection, generation: r.connectionGeneration, requestID: r.requestID, request: r.request,
                                bypassTier: true)
        guard r.error >= 0 else {
            tier.abortLoad(slot: r.tierSlot)
            service.cache.readFailed(plan, reason: "read failed: \(String(cString: strerror(-r.error)))")
            startRead(retry)
            return
        }
        switch complete(plan, r, buffer: base) {
        case .hit(let length, let crc):
            tier.finishLoad(slot: r.tierSlot, length: length, crc: crc)
            let hit = r.request.keyBytes.withUnsafeBytes { tier.lookup(r.request.id, key: $0) }
            guard let conn = connection(r.connection, r.connectionGeneration), conn.isOpen else {
                if let hit { tier.unpin(hit.slot) }
                return
            }
            if let hit { replyFromTier(conn, retry, hit, tier) } else { startRead(retry) }
        case .corrupt(let reason):
            tier.abortLoad(slot: r.tierSlot)
            service.droppedBadBlock(r.request.block, reason)
            startRead(retry)
        case .miss:
            tier.abortLoad(slot: r.tierSlot)
            startRead(retry)
        }
    }

    /// Checks what op `r`'s plan read into `buffer` against its key's bytes.
    private func complete(_ plan: ReadPlan, _ r: ReadOp, buffer: UnsafeRawPointer) -> CacheRead {
        r.request.keyBytes.withUnsafeBytes { key in
            service.cache.complete(plan, id: r.request.id, buffer: buffer, readComplete: r.bytes == plan.count, encodedKey: key,
                                   expectedLength: r.request.expectedLength) { r.request.block }
        }
    }

    private func diskRead(_ op: Int, _ generation: UInt32, _ res: Int32) {
        guard ops.value(op, generation) != nil else { return }
        ops[op]!.pending -= 1
        if res < 0 { ops[op]!.error = res }
        ops[op]!.bytes += Int(max(res, 0))
        if let plan = ops[op]!.plan {
            guard ops[op]!.pending == 0 else { return }
            let r = ops[op]!
            if r.tierSlot >= 0 {
                tierLoaded(op, r, plan)
                return
            }
            if r.submitFailed {
                toFill(op)
                return
            }
            if r.error < 0 {
                service.cache.readFailed(plan, reason: "read failed: \(String(cString: strerror(-r.error)))")
                toFill(op)
                return
            }
            let base = plane.pool.bufferBase(r.lease)
            switch complete(plan, r, buffer: base) {
            case .hit(let length, let crc):
                recordHit(r.request)
                let data = base + BlockCache.dataOffset
                let rangeCRC = BlockService.rangeCRC(r.request, blockLength: length, blockCRC: crc, data: data)
                reply(op, FilledRange(dataOffset: BlockCache.dataOffset + Int(r.request.offset), length: Int(r.request.length),
                                      crc: rangeCRC, fill: nil))
            case .corrupt(let reason):
                service.droppedBadBlock(r.request.block, reason)
                toFill(op)
            case .miss:
                toFill(op)
            }
        }
    }

    /// Sends READ op `op` to a fill thread: a miss, a bad block, or a failed disk read.
    /// The fill thread looks in the cache once more first: the block may have been written
    /// there since the shard looked (its filler finished), and then it is not fetched twice.
    /// A GET it starts runs on the store's fetch thread, which reports its bytes as they come
    /// (a large reply streams them) and its end, here.
    private func toFill(_ op: Int) {
        let r = ops[op]!
        jobsOut += 1
        let (plane, generation) = (self.plane, ops.generation(op))
        // Only a reply that carries data, and enough of it, streams.
        let streams = !r.request.isFillOnly && !service.answerWithoutData && Int(r.request.length) >= Shard.streamPiece
        let reporter = ProgressReporter(step: Shard.streamPiece, end: Int(r.request.offset) + Int(r.request.length))
        let lane = r.inLane ? connection(r.connection, r.connectionGeneration)?.lane : nil
        let job: @Sendable (IORing) -> Void = { [self] ring in
            guard let lease = plane.park.unpark(r.lease) else { return }
            // A warm's block in this buffer already (fetched here, or copied from another
            // reader's fill) is cached by this thread at once: whether it is held is the answer.
            var warmed: Result<FilledRange, ShoalError>?
            let start = plane.pool.withSlot(lease, ring: ring) { slot in
                let start = Result { () throws(ShoalError) -> FillStart in
                    try plane.service.startRead(r.request, slot: slot, progress: { [self] bytes in
                        if streams && reporter.worthReporting(bytes) { post(.fillProgress(op: op, generation: generation, bytes)) }
                    }, done: { [self] result in
                        post(.filled(op: op, generation: generation, result))
                    })
                }
                if r.request.isFillOnly, case .success(.ready(let range)) = start, range.fill != nil {
                    warmed = cacheWarmFill(range, slot: slot)
                }
                return start
            }
            if let warmed {
                // Its lane's next READs run here, one after another, in the same buffer.
                guard let lane, let next = lane.next() else {
                    plane.giveLease(lease)
                    post(.warmed(op: op, generation: generation, warmed, chained: false))
                    return
                }
                post(.warmed(op: op, generation: generation, warmed, chained: true))
                runLane(lane, from: next, lease: lease, ring: ring)
                plane.giveLease(lease)
                post(.chainEnded)
                return
            }
            // The lease is back in its place before a GET can end and the shard reply from it.
            _ = plane.park.park(lease)
            switch start {
            case .success(.ready(let range)): post(.filled(op: op, generation: generation, .success(range)))
            case .success(.fetch(let begin)): begin()
            case .failure(let error): post(.filled(op: op, generation: generation, .failure(error)))
            }
        }
        guard r.request.isFillOnly else { return plane.fillPool.submit(job) }
        // A warm's fill waits in the warm-up queue, behind the readers; a worker that is stopping
        // turns it away, and the warm asks the block's next owner.
        plane.fillPool.submitBackground(FillPool.BackgroundJob(run: job, cancel: { [self] in
            post(.filled(op: op, generation: generation, .failure(ShoalError(.shuttingDown, "the worker is stopping; warm this block on its next owner"))))
        }))
    }

    /// On the fill thread that filled a warm lane's READ: runs the lane's next ones in `lease`,
    /// from `first`, each as the one before ends, with no op and no hop to the shard and back
    /// between them, while it may (a warm's GET on a fill thread free, no reader's job waiting,
    /// the warm-up queue open); the READ it may not run goes to the shard, as any READ.
    private func runLane(_ lane: WarmLane, from first: WaitingRead, lease: borrowing Lease, ring: IORing) {
        var next: WaitingRead? = first
        while let read = next {
            guard plane.fillPool.mayRunWarm, service.claimWarmFetch() else {
                post(.laneStart(read))
                return
            }
            let answer = plane.pool.withSlot(lease, ring: ring) { slot in
                Result { () throws(ShoalError) -> FillStart in
                    try plane.service.startRead(read.request, slot: slot, claimed: true, progress: { _ in }, done: { _ in })
                }.flatMap { start -> Result<FilledRange, ShoalError> in
                    guard case .ready(let range) = start else {
                        return .failure(ShoalError(.internal, "a warm's fill on a fill thread was not fetched there"))
                    }
                    return cacheWarmFill(range, slot: slot)
                }
            }
            service.releaseWarmFetch()
            post(.laneAnswer(connection: read.connection, generation: read.generation, requestID: read.requestID, answer))
            next = lane.next()
        }
    }

    /// The smallest piece of a streamed reply sent at once (and the smallest reply that streams).
    static let streamPiece = 256 * 1024

    /// A fill of READ op `op` has `bytes` of its block in place: the part of the requested range
    /// among them goes out now, ahead of the rest. Only one reply streams on a connection at a
    /// time (others wait for their whole block), and frames for the connection's other requests
    /// wait until it ends.
    private func stream(_ op: Int, _ generation: UInt32, upTo bytes: Int) {
        guard let r = ops.value(op, generation), let conn = connection(r.connection, r.connectionGeneration), conn.isOpen else { return }
        // Data RDMA-written goes in one write once the block is whole.
        if r.request.rdma != nil, conn.rdma != nil { return }
        let start = Int(r.request.offset)
        let end = start + Int(r.request.length)
        let from = start + r.streamed
        let to = min(bytes, end)
        guard to - from >= Shard.streamPiece || (to == end && to > from && r.streamed > 0) else { return }
        let base = plane.pool.bufferBase(r.lease) + BlockCache.dataOffset
        let piece = UnsafeRawBufferPointer(start: base + from, count: to - from)
        if r.streamed == 0 {
            guard conn.streamOp == nil, let head = conn.takeHead() else { return }
            guard conn.machine.beginReadStream(id: r.requestID, count: Int(r.request.length), head: conn.head(head)),
                  conn.machine.continueReadStream(piece)
            else {
                conn.freeHead(head)
                kill(conn)
                return
            }
            conn.streamOp = op
            push(conn, OutFrame(head: head, headCount: ReadReplyHead.size, data: piece, tailCount: 0, requestID: nil, after: .nothing), streamed: true)
        } else {
            guard conn.streamOp == op, conn.machine.continueReadStream(piece) else {
                kill(conn)
                return
            }
            push(conn, OutFrame(piece: piece), streamed: true)
        }
        ops[op]!.streamed = to - start
        service.metrics.bytesStreamed.increment(by: Int64(to - from))
        flush(conn)
    }

    private func filled(_ op: Int, _ generation: UInt32, _ result: Result<FilledRange, ShoalError>) {
        guard let r = ops.value(op, generation) else { return }
        switch result {
        case .success(let range):
            reply(op, range)
        case .failure(let error):
            freeOp(op)
            let conn = connection(r.connection, r.connectionGeneration)
            if r.streamed > 0, let conn {
                // Part of the reply is out and the rest cannot come: nothing more can be said on
                // this connection (the client sees it close mid-reply and may try again).
                service.metrics.error(error.code)
                logger.warning("a fill failed after its reply started; closing the connection", metadata: ["error": "\(error)"])
                kill(conn)
                // Its pieces may still be read by a send in flight: the lease waits for the close.
                conn.afterClose.append(.giveLease(r.lease))
                finalizeIfDone(conn)
                return
            }
            releaseLease(r.lease, connection: r.connection, generation: r.connectionGeneration)
            if let conn, conn.isOpen {
                replyError(conn, .readReply, r.requestID, error)
                flush(conn)
            }
        }
    }

    /// Queues the reply of READ op `op` from its lease (data sent from where it lies); a reply
    /// that streamed gets its last bytes and its trailer.
    private func reply(_ op: Int, _ range: FilledRange) {
        let r = ops[op]!
        freeOp(op)
        if r.request.isFillOnly, let fill = range.fill {
            answerAfterCaching(r, range, fill)
            return
        }
        let after: AfterSend = range.fill.map { .finishFill(lease: r.lease, $0) } ?? .giveLease(r.lease)
        if r.streamed > 0, let conn = connection(r.connection, r.connectionGeneration), !conn.isOpen {
            // Its pieces may still be read by a send in flight: the lease waits for the close.
            conn.afterClose.append(after)
            finalizeIfDone(conn)
            return
        }
        guard let conn = connection(r.connection, r.connectionGeneration), conn.isOpen else {
            afterSend(after, connection: r.connection, generation: r.connectionGeneration)
            return
        }
        let base = plane.pool.bufferBase(r.lease)
        if r.streamed > 0 {
            endStream(conn, r, crc: range.crc, rest: UnsafeRawBufferPointer(start: base + range.dataOffset + r.streamed, count: range.length - r.streamed),
                      after: after)
        } else if service.answerWithoutData || r.request.isFillOnly {
            enqueueNoData(conn, id: r.requestID, crc: range.crc, length: range.length, origin: range.origin)
            afterSend(after, connection: r.connection, generation: r.connectionGeneration)
        } else {
            sendData(conn, r.request, id: r.requestID, crc: range.crc, data: UnsafeRawBufferPointer(start: base + range.dataOffset, count: range.length),
                     origin: range.origin, after: after)
        }
        flush(conn)
    }

    /// A warm's fill: its answer means "cached", so the block is written to the cache first (on
    /// a fill thread; the write finishes work already done, so it does not wait behind other
    /// warms), then READ_NODATA goes out; a block that could not be cached is an error the warm
    /// reports. A warm that finds the block cached, or a check right after, never misses it.
    private func answerAfterCaching(_ r: ReadOp, _ range: FilledRange, _ fill: PendingFill) {
        if let conn = connection(r.connection, r.connectionGeneration) { conn.leases -= 1 }
        jobsOut += 1
        let body = NoDataReply(crc: range.crc, length: UInt32(range.length), origin: range.origin).encoded
        cacheFilled(r.lease, fill) { [self] held in
            let answer: Result<[UInt8], ShoalError> = held ? .success(body) : .failure(notCached(fill))
            post(.answer(connection: r.connection, generation: r.connectionGeneration, requestID: r.requestID, .readNoData, answer))
        }
    }

    private func notCached(_ fill: PendingFill) -> ShoalError {
        ShoalError(.notCached, "block \(fill.key.index) of \(fill.key.object) was fetched but could not be cached on this worker (see its log)")
    }

    /// A warm's fill that a fill thread fetched and cached (or failed to cache) start to finish;
    /// its lease is back in the pool.
    private func warmed(_ op: Int, _ generation: UInt32, _ result: Result<FilledRange, ShoalError>) {
        guard let r = ops.value(op, generation) else { return }
        // Its lane went on (or went idle) on the fill thread.
        freeOp(op, endsLaneRead: false)
        guard let conn = connection(r.connection, r.connectionGeneration) else { return }
        conn.leases -= 1
        if conn.isOpen { answerWarm(conn, r.requestID, result) }
        serveWaiting()
    }

    /// A warm's answer: READ_NODATA (the block is cached), or why not.
    private func answerWarm(_ conn: ShardConnection, _ id: UInt32, _ result: Result<FilledRange, ShoalError>) {
        switch result {
        case .success(let range): enqueueNoData(conn, id: id, crc: range.crc, length: range.length, origin: range.origin)
        case .failure(let error): replyError(conn, .readNoData, id, error)
        }
        flush(conn)
    }

    /// On a fill thread: a warm's fill that came back ready is written to the cache (one copied
    /// from the cache is there already); the warm's answer.
    private func cacheWarmFill(_ range: FilledRange, slot: IOSlot) -> Result<FilledRange, ShoalError> {
        guard let fill = range.fill else { return .success(range) }
        return plane.service.finishFill(fill, slot: slot) ? .success(range) : .failure(notCached(fill))
    }

    /// On a fill thread: writes filled block `fill` (in parked lease `li`) to the cache, gives the
    /// lease back, then tells `then` whether the block is held.
    private func cacheFilled(_ li: Int, _ fill: PendingFill, then: @escaping @Sendable (Bool) -> Void = { _ in }) {
        let plane = self.plane
        plane.fillPool.submit { ring in
            guard let lease = plane.park.unpark(li) else { return }
            let held = plane.pool.withSlot(lease, ring: ring) { slot in plane.service.finishFill(fill, slot: slot) }
            plane.giveLease(lease)
            then(held)
        }
    }

    /// The end of a streamed reply: its last bytes and trailer; then the frames that waited.
    private func endStream(_ conn: ShardConnection, _ r: ReadOp, crc: UInt32, rest: UnsafeRawBufferPointer, after: AfterSend) {
        guard let head = conn.takeHead() else {
            afterSend(after, connection: conn.slot, generation: conn.generation)
            kill(conn)
            return
        }
        let trailer = conn.head(head) + ShardConnection.trailerOffset
        guard rest.isEmpty || conn.machine.continueReadStream(rest), conn.machine.finishReadStream(crc: crc, trailer: trailer) else {
            conn.freeHead(head)
            afterSend(after, connection: conn.slot, generation: conn.generation)
            kill(conn)
            return
        }
        if !rest.isEmpty { service.metrics.bytesStreamed.increment(by: Int64(rest.count)) }
        service.metrics.repliesStreamed.increment()
        push(conn, OutFrame(head: head, headCount: 0, data: rest, tailCount: ReadReplyTrailer.size + conn.machine.tagSize,
                            requestID: r.requestID, after: after), streamed: true)
        conn.streamOp = nil
        let waited = conn.deferred
        conn.deferred.removeAll()
        for f in waited {
            if conn.state != .dead {
                push(conn, f)
            } else {
                // The connection died on the way: what the rest held goes back.
                if let owned = f.owned { owned.deallocate() }
                afterSend(f.after, connection: conn.slot, generation: conn.generation)
            }
        }
    }

    /// READ_NODATA: the CRC32C and length of the data a READ_REPLY would have carried, and
    /// where the block came from.
    private func enqueueNoData(_ conn: ShardConnection, id: UInt32, crc: UInt32, length: Int, origin: BlockOrigin) {
        let body = NoDataReply(crc: crc, length: UInt32(length), origin: origin).encoded
        enqueueSmall(conn, conn.machine.encodeFrame(.readNoData, id: id, body: body), requestID: id)
    }

    private func releaseLease(_ li: Int, connection slot: Int, generation: UInt32) {
        if let conn = connection(slot, generation) { conn.leases -= 1 }
        plane.giveParked(li, caller: self)
        serveWaiting()
    }

    /// What is done once a reply's bytes are sent (or the connection is gone).
    private func afterSend(_ after: AfterSend, connection slot: Int, generation: UInt32) {
        switch after {
        case .nothing:
            break
        case .giveLease(let li):
            releaseLease(li, connection: slot, generation: generation)
        case .unpinTier(let slot):
            plane.tier?.unpin(slot)
        case .finishFill(let li, let fill):
            // The block goes to the cache on a fill thread; the lease comes back after.
            if let conn = connection(slot, generation) { conn.leases -= 1 }
            cacheFilled(li, fill)
        }
    }

    private func serveWaiting() {
        while waitingHead < waiting.count, plane.pool.available > 0 {
            let w = waiting[waitingHead]
            if let conn = connection(w.connection, w.generation), conn.isOpen, conn.leases >= plane.config.leasesPerConnection {
                // This connection's share is in use: it waits, and the ones behind it go first.
                var k = waitingHead + 1
                while k < waiting.count, let c = connection(waiting[k].connection, waiting[k].generation), c.isOpen,
                      c.leases >= plane.config.leasesPerConnection {
                    k += 1
                }
                guard k < waiting.count else { break }
                waiting.swapAt(waitingHead, k)
                continue
            }
            waitingHead += 1
            plane.noteWaiting(-1, starved: w.starved)
            var next = w
            next.starved = false
            startRead(next)
        }
        if waitingHead == waiting.count {
            waiting.removeAll(keepingCapacity: true)
            waitingHead = 0
            setWaiters(false)
        } else if waitingHead > 256 {
            waiting.removeFirst(waitingHead)
            waitingHead = 0
        }
    }

    private func newOp(_ op: ReadOp) -> Int { ops.insert { _, _ in op } }

    /// Frees op `i`; a warm lane's READ that ends here (`endsLaneRead`: not on the fill thread
    /// that goes on with the lane) lets the lane's next start.
    private func freeOp(_ i: Int, endsLaneRead: Bool = true) {
        if let op = ops.remove(i), op.inLane, endsLaneRead { lanesEnded.append((op.connection, op.connectionGeneration)) }
    }

    /// Starts the next READ of each warm lane whose READ ended this turn (its GET is done; the
    /// block's write may still be under way on a fill thread).
    private func advanceLanes() {
        while let (slot, generation) = lanesEnded.popLast() {
            guard let conn = connection(slot, generation), conn.isOpen, let next = conn.lane.next() else { continue }
            startRead(next)
        }
    }

    // MARK: sending

    private func enqueueSmall(_ conn: ShardConnection, _ bytes: [UInt8], requestID: UInt32?) {
        guard !bytes.isEmpty else {
            // A tag could not be made: nothing more can be said on this connection.
            if let requestID { conn.machine.finished(requestID, into: &actions) }
            actions.removeAll(keepingCapacity: true)
            kill(conn)
            return
        }
        push(conn, OutFrame(copying: bytes, requestID: requestID))
    }

    // MARK: RDMA

    /// RDMA_CONNECT: a queue pair of the worker's device connected to the client's, answered
    /// with its own address. From then on this connection's READs with a descriptor get their
    /// data by RDMA WRITE.
    private func connectRDMA(_ conn: ShardConnection, _ id: UInt32, _ peer: RDMAConnectMessage) {
        guard let rdma = plane.rdma else {
            replyError(conn, .rdmaConnectReply, id, ShoalError(.badRequest, "this worker serves over TCP only (it has no 'rdma' in its config)"))
            return
        }
        guard conn.rdma == nil, !conn.rdmaLost, !conn.rdmaConnecting else {
            replyError(conn, .rdmaConnectReply, id, ShoalError(.badRequest, "this connection has had its RDMA queue pair already"))
            return
        }
        // Making and connecting a queue pair are verbs calls into the kernel (and the NIC's
        // firmware): on a fill thread, so the shard's other connections do not wait on them.
        conn.rdmaConnecting = true
        jobsOut += 1
        let (slot, generation, depth) = (conn.slot, conn.generation, Int(plane.config.maxInFlight))
        plane.fillPool.submit { [self] _ in
            let made = Result { () throws(RDMAError) -> RDMAQueue in try rdma.accept(peer, depth: depth) }
            post(.rdmaConnected(connection: slot, generation: generation, requestID: id, QueueHandoff(made)))
        }
    }

    /// A queue pair made for connection `slot` (or why not): it answers RDMA_CONNECT with it.
    private func rdmaConnected(_ slot: Int, _ generation: UInt32, _ id: UInt32, _ made: Result<RDMAQueue, RDMAError>) {
        guard let conn = connection(slot, generation), conn.isOpen else {
            // The connection went meanwhile: so does the queue pair.
            if case .success(let queue) = made { queue.close() }
            return
        }
        conn.rdmaConnecting = false
        switch made {
        case .success(let queue):
            conn.rdma = queue
            service.metrics.rdmaConnections.increment()
            let address = queue.driver.address
            let mine = RDMAConnectMessage(queuePair: address.queuePair, gid: address.gid, psn: address.psn)
            enqueueSmall(conn, conn.machine.encodeFrame(.rdmaConnectReply, id: id, body: mine.encoded), requestID: id)
        case .failure(let error):
            let device = plane.rdma?.device.name ?? "the device"
            replyError(conn, .rdmaConnectReply, id, ShoalError(.internal, "cannot connect an RDMA queue pair on \(device): \(error)"))
        }
        flush(conn)
    }

    /// A READ's data: RDMA-written into the client's memory when the READ carries a descriptor
    /// and the connection's queue pair is up (READ_NODATA follows once the write completed),
    /// else in a READ_REPLY. The buffer (`after`) is held until the write's completion.
    private func sendData(_ conn: ShardConnection, _ request: ReadRequest, id: UInt32, crc: UInt32, data: UnsafeRawBufferPointer,
                          origin: BlockOrigin, after: AfterSend) {
        guard let d = request.rdma, conn.rdma != nil, plane.rdma != nil, data.count > 0 else {
            enqueueData(conn, id: id, crc: crc, data: data, after: after)
            return
        }
        let w = RDMAReply(conn: conn, requestID: id, crc: crc, data: data, origin: origin, after: after, descriptor: d)
        // The device's writes and each queue pair's are bounded: past either bound the write
        // waits (its buffer held) until one completes, behind any that wait already.
        if !rdmaWaiting.isEmpty || !post(w) {
            service.metrics.rdmaBusy.increment()
            rdmaWaiting.append(w)
        }
    }

    /// Posts `w`'s write: false when the device or the queue pair has no room. A post the device
    /// refuses stops RDMA on the connection, and the READ is answered over TCP.
    private func post(_ w: RDMAReply) -> Bool {
        let conn = w.conn
        guard let queue = conn.rdma, let rdma = plane.rdma, let base = w.data.baseAddress else {
            // RDMA stopped on this connection while the write waited.
            answerOverTCP(w)
            return true
        }
        guard rdma.beginTransfer() else { return false }
        let chain: UInt64?
        do {
            chain = try queue.write([RDMAWrite(local: base, length: w.data.count, lkey: rdma.region.lkey,
                                               remoteAddress: w.descriptor.address, rkey: w.descriptor.rkey)])
        } catch {
            rdma.endTransfers(1)
            rdmaFailed(conn, "\(error)")
            answerOverTCP(w)
            return true
        }
        guard let chain else {
            rdma.endTransfers(1)
            return false
        }
        service.metrics.rdmaWrites.increment()
        service.metrics.rdmaBytes.increment(by: Int64(w.data.count))
        conn.rdmaWrites.append(RDMAPendingReply(chain: chain, posted: monotonicNanos(), reply: w))
        if !conn.rdmaBusy {
            conn.rdmaBusy = true
            rdmaBusy.append(conn)
        }
        return true
    }

    /// Posts the writes that waited, oldest first, while there is room. One at a time from the
    /// front: what a post sets off (an answer over TCP, a connection killed) may change the list.
    private func postWaiting() {
        while !rdmaWaiting.isEmpty {
            let w = rdmaWaiting.removeFirst()
            if w.conn.state == .dead {
                afterSend(w.after, connection: w.conn.slot, generation: w.conn.generation)
                continue
            }
            guard post(w) else {
                rdmaWaiting.insert(w, at: 0)
                return
            }
            flush(w.conn)
        }
    }

    /// Polls the queue pairs with writes outstanding: a completed write's READ is answered with
    /// READ_NODATA (its CRC32C and length, which the client checks its memory against); a failed
    /// one stops RDMA on that connection and its READs are answered over TCP.
    private func pollRDMA() {
        let busy = rdmaBusy
        rdmaBusy.removeAll(keepingCapacity: true)
        for conn in busy {
            conn.rdmaBusy = false
            guard conn.state == .open || conn.state == .flushing, let queue = conn.rdma else { continue }
            do throws(RDMAError) {
                for c in try queue.poll() {
                    guard case .success = c.status else {
                        rdmaFailed(conn, c.status == .flushed ? "a write was flushed" : "\(c.status)")
                        break
                    }
                    // That write and every older one are done (a reliable connection completes in order).
                    while let first = conn.rdmaWrites.first, first.chain <= c.id {
                        conn.rdmaWrites.removeFirst()
                        plane.rdma?.endTransfers(1)
                        let w = first.reply
                        enqueueNoData(conn, id: w.requestID, crc: w.crc, length: w.data.count, origin: w.origin)
                        afterSend(w.after, connection: conn.slot, generation: conn.generation)
                    }
                }
            } catch {
                rdmaFailed(conn, "\(error)")
            }
            // (Answers above may have started READs that posted writes since: elapsed, not now - posted.)
            if let first = conn.rdmaWrites.first, elapsedNanos(from: first.posted, to: monotonicNanos()) > Shard.rdmaWriteTimeoutNanos {
                rdmaFailed(conn, "no completion for a write in \(Shard.rdmaWriteTimeoutNanos / 1_000_000) ms")
            }
            if !conn.rdmaWrites.isEmpty, !conn.rdmaBusy {
                conn.rdmaBusy = true
                rdmaBusy.append(conn)
            }
            flush(conn)
        }
        if !rdmaWaiting.isEmpty { postWaiting() }
    }

    static let rdmaWriteTimeoutNanos: UInt64 = 5_000_000_000

    /// RDMA failed on `conn` (a post refused, an error completion, no completion in time): its
    /// queue pair is destroyed, so the device reads none of its buffers any more, and the READs
    /// whose writes were outstanding are answered over TCP from the same buffers. The
    /// connection goes on over TCP; the client sees a READ_REPLY where it asked for RDMA and
    /// stops asking.
    private func rdmaFailed(_ conn: ShardConnection, _ reason: String) {
        guard conn.rdma != nil else { return }
        plane.protocolErrorLog.log(logger, .warning, "RDMA failed on a connection; its READs go over TCP", ["error": "\(reason)"])
        for w in dropRDMA(conn) { answerOverTCP(w) }
    }

    /// Destroys the connection's queue pair (the device reads none of its buffers after this)
    /// and hands back the replies whose writes were outstanding.
    private func dropRDMA(_ conn: ShardConnection) -> [RDMAReply] {
        guard let queue = conn.rdma else { return [] }
        queue.close()
        conn.rdma = nil
        conn.rdmaLost = true
        let outstanding = conn.rdmaWrites.map(\.reply)
        conn.rdmaWrites.removeAll()
        plane.rdma?.endTransfers(outstanding.count)
        return outstanding
    }

    /// A READ asked by RDMA answered over TCP instead, from the same buffer.
    private func answerOverTCP(_ w: RDMAReply) {
        service.metrics.rdmaFallbacks.increment()
        enqueueData(w.conn, id: w.requestID, crc: w.crc, data: w.data, after: w.after)
    }

    private func enqueueData(_ conn: ShardConnection, id: UInt32, crc: UInt32, data: UnsafeRawBufferPointer, after: AfterSend) {
        guard let head = conn.takeHead() else {
            // Cannot happen: heads outnumber the requests a connection may have in flight.
            afterSend(after, connection: conn.slot, generation: conn.generation)
            kill(conn)
            return
        }
        let headPointer = conn.head(head)
        guard conn.machine.sealReadReply(id: id, crc: crc, data: data, head: headPointer, trailer: headPointer + ShardConnection.trailerOffset) else {
            conn.freeHead(head)
            afterSend(after, connection: conn.slot, generation: conn.generation)
            kill(conn)
            return
        }
        push(conn, OutFrame(head: head, headCount: ReadReplyHead.size, data: data,
                            tailCount: ReadReplyTrailer.size + conn.machine.tagSize, requestID: id, after: after))
    }

    /// Puts a frame (or a piece of one) on the connection's queue; while a READ_REPLY streams,
    /// other frames wait behind it (`deferred`), since no frame may start inside another.
    private func push(_ conn: ShardConnection, _ frame: OutFrame, streamed: Bool = false) {
        if conn.streamOp != nil && !streamed {
            conn.deferred.append(frame)
            return
        }
        guard let tls = conn.tls else {
            conn.queue.append(frame)
            return
        }
        // TLS copies the bytes into its records: what the frame held can go at once.
        var ok = true
        if let owned = frame.owned {
            ok = tls.write([UnsafeRawBufferPointer(start: owned, count: frame.ownedCount)])
            owned.deallocate()
        } else {
            var pieces: [UnsafeRawBufferPointer] = []
            if frame.head >= 0 && frame.headCount > 0 { pieces.append(UnsafeRawBufferPointer(start: conn.head(frame.head), count: frame.headCount)) }
            if frame.data.count > 0 { pieces.append(frame.data) }
            if frame.head >= 0 && frame.tailCount > 0 {
                pieces.append(UnsafeRawBufferPointer(start: conn.head(frame.head) + ShardConnection.trailerOffset, count: frame.tailCount))
            }
            if !pieces.isEmpty { ok = tls.write(pieces) }
            if frame.head >= 0 { conn.freeHead(frame.head) }
            afterSend(frame.after, connection: conn.slot, generation: conn.generation)
        }
        guard ok else {
            kill(conn)
            return
        }
        queueTLSOutput(conn, tls)
        if let id = frame.requestID { conn.queue.append(OutFrame(marker: id)) }
    }

    private func queueTLSOutput(_ conn: ShardConnection, _ tls: TLSEngine) {
        let n = tls.pendingOutput
        guard n > 0 else { return }
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 16)
        let got = tls.takeOutput(into: p, max: n)
        conn.queue.append(OutFrame(owned: p, count: got))
    }

    /// Starts a send of what is queued, if none is in flight: one SENDMSG gathers several
    /// replies (headers, data from the leases, tags).
    private func flush(_ conn: ShardConnection) {
        guard !conn.sending, conn.state != .dead else { return }
        while true {
            if conn.inSend.isEmpty {
                let n = min(conn.queue.count, ShardConnection.framesPerSend)
                conn.inSend.append(contentsOf: conn.queue.prefix(n))
                conn.queue.removeFirst(n)
            }
            guard !conn.inSend.isEmpty else {
                if conn.state == .flushing { startDraining(conn) }
                return
            }
            if conn.buildMessage() > 0 { break }
            // Only markers (replies that went out inside TLS records already sent): done now.
            let frames = conn.inSend
            conn.inSend.removeAll(keepingCapacity: true)
            conn.sentInFirst = 0
            for f in frames { done(conn, f) }
            perform(conn)
            if conn.state == .dead { return }
            receiveIfWanted(conn)
        }
        // Zero copy only pays for replies that carry data; small frames are copied anyway.
        let zeroCopy = plane.config.sendZeroCopy && conn.inSend.contains { $0.data.count >= 65536 }
        do {
            try ring.sendMessage(fd: conn.fd, conn.message, userData: Shard.userData(.send, conn.slot, conn.generation), zeroCopy: zeroCopy)
            conn.sending = true
            if conn.sendStarted == 0 { conn.sendStarted = monotonicNanos() }
        } catch {
            logger.error("cannot send on a connection", metadata: ["error": "\(error)"])
            kill(conn)
        }
    }

    /// A zero-copy send's notification: the kernel is done with the buffers of the frames it sent.
    private func notified(_ slot: Int, _ generation: UInt32) {
        guard let conn = connection(slot, generation) else { return }
        conn.notifications -= 1
        let frames = conn.awaitingNotification.removeFirst()
        for f in frames { done(conn, f) }
        carryOn(conn)
    }

    /// After replies went out: the requests their places let in, more input, the next send (or,
    /// for a dead connection, its close once nothing is in flight).
    private func carryOn(_ conn: ShardConnection) {
        if conn.state == .dead {
            finalizeIfDone(conn)
            return
        }
        perform(conn)
        if conn.state == .open && conn.machine.wantsInput { armReceive(conn) }
        flush(conn)
    }

    private func sent(_ slot: Int, _ generation: UInt32, _ res: Int32, zeroCopy: Bool = false) {
        guard let conn = connection(slot, generation) else { return }
        conn.sending = false
        // A zero-copy send is followed by its notification (even when it failed): the frames it
        // finishes wait for it before their buffers go back.
        if zeroCopy {
            conn.notifications += 1
            conn.awaitingNotification.append([])
        }
        guard res > 0 else {
            kill(conn)
            finalizeIfDone(conn)
            return
        }
        conn.sendStarted = monotonicNanos()
        var left = Int(res)
        while !conn.inSend.isEmpty {
            let remaining = conn.inSend[0].total - conn.sentInFirst
            guard left >= remaining else {
                conn.sentInFirst += left
                break
            }
            left -= remaining
            conn.sentInFirst = 0
            let f = conn.inSend.removeFirst()
            if zeroCopy {
                conn.awaitingNotification[conn.awaitingNotification.count - 1].append(f)
            } else {
                done(conn, f)
            }
        }
        if conn.inSend.isEmpty && conn.queue.isEmpty { conn.sendStarted = 0 }
        carryOn(conn)
    }

    /// A frame is on its way: free what it held, and let its request's place go.
    private func done(_ conn: ShardConnection, _ f: OutFrame) {
        if let owned = f.owned { owned.deallocate() }
        if f.head >= 0 { conn.freeHead(f.head) }
        afterSend(f.after, connection: conn.slot, generation: conn.generation)
        if let id = f.requestID, conn.state != .dead { conn.machine.finished(id, nonce: nonce, into: &actions) }
    }

    // MARK: closing

    /// Closes after what is queued is sent (an ERROR saying why): then the sending side is shut,
    /// and what the client still sends is read and dropped until it closes (or a second passes),
    /// so the kernel does not reset the connection before the client reads the ERROR.
    private func closeAfterFlush(_ conn: ShardConnection) {
        guard conn.state == .open else { return }
        guard conn.streamOp == nil else {
            // Its ERROR cannot go out inside a streaming reply.
            kill(conn)
            return
        }
        conn.state = .flushing
        conn.deadline = monotonicNanos() + 2_000_000_000
        flush(conn)
    }

    private func startDraining(_ conn: ShardConnection) {
        conn.state = .draining
        Sockets.shutdownWrite(conn.fd)
        conn.deadline = monotonicNanos() + 1_000_000_000
        armReceive(conn)
    }

    /// Ends a connection now: operations on its socket complete (and are dropped), then it is
    /// closed and its slot freed.
    private func kill(_ conn: ShardConnection) {
        guard conn.state != .dead else { return }
        conn.state = .dead
        if !conn.refused { plane.release(conn.place) }
        conn.lane.close()
        Sockets.shutdown(conn.fd)
        // Its queue pair goes first: once it is destroyed the device reads none of the buffers
        // of the writes still outstanding, and they go back with the rest (those that waited for
        // room too, taken out first: what afterSend starts may post, and look at the list, again).
        let waited = rdmaWaiting.filter { $0.conn === conn }
        rdmaWaiting.removeAll { $0.conn === conn }
        for w in dropRDMA(conn) + waited { afterSend(w.after, connection: conn.slot, generation: conn.generation) }
        // Replies not sent: their buffers go back now.
        for f in conn.inSend + conn.queue + conn.deferred {
            if let owned = f.owned { owned.deallocate() }
            afterSend(f.after, connection: conn.slot, generation: conn.generation)
        }
        conn.inSend.removeAll()
        conn.queue.removeAll()
        conn.deferred.removeAll()
        conn.streamOp = nil
        finalizeIfDone(conn)
    }

    private func finalizeIfDone(_ conn: ShardConnection) {
        guard conn.state == .dead, !conn.receiving, !conn.sending, conn.notifications == 0, connections[conn.slot] === conn else { return }
        Sockets.close(conn.fd)
        connections.remove(conn.slot)
        // Nothing reads the buffers of its streamed replies any more.
        let parked = conn.afterClose
        conn.afterClose.removeAll()
        for after in parked { afterSend(after, connection: conn.slot, generation: conn.generation) }
        if conn.refused { refusing -= 1 } else { service.metrics.connections.decrement() }
    }

    private func recordHit(_ request: ReadRequest) {
        guard !request.isFillOnly else { return }
        service.recordHit(request)
        hitTally[tally(request)]!.add(bytes: Int(request.length))
    }

    /// A warm's fill-only READ the index answered: not a read, but the dataset is named (its
    /// cached bytes show under its name), in the same batched report as the hits.
    private func tallyWarmed(_ request: ReadRequest) { _ = tally(request) }

    /// The request's object in this report's tally (made on its first hit): its key.
    private func tally(_ request: ReadRequest) -> BlockID {
        let object = request.withObjectBytes { BlockID(hashing: $0) }
        if hitTally[object] == nil {
            // The object's names are decoded once per report, not per hit.
            hitTally[object] = HitTally(object: request.block.object, blocks: service.objectBlocks(request))
        }
        return object
    }

    private func flushHits() {
        for t in hitTally.values {
            service.datasets.record(t.object, hits: t.hits, misses: 0, served: t.bytes, filled: 0, objectBlocks: t.blocks)
        }
        hitTally.removeAll(keepingCapacity: true)
    }

    /// Deadlines: handshakes, farewells, and replies that stopped moving.
    private func sweep(_ now: UInt64) {
        flushHits()
        // Others wait because every buffer is taken, not only their connection's share.
        let waitersExist = plane.starved
        for conn in connections.all {
            if conn.receiveLater {
                conn.receiveLater = false
                if conn.state == .open && conn.machine.wantsInput || conn.state == .draining { armReceive(conn) }
            }
            if let d = conn.deadline, now > d {
                switch conn.state {
                case .open:
                    service.metrics.error(.timeout)
                    logClosing("closing a connection that did not finish its handshake in time", [:])
                    let action = conn.machine.close(.timeout, "the handshake did not finish within \(plane.config.handshakeTimeoutNanos / 1_000_000_000) s")
                    if case .close(let bytes, _, _) = action, conn.tls == nil {
                        conn.queue.append(OutFrame(copying: bytes, requestID: nil))
                        closeAfterFlush(conn)
                    } else {
                        kill(conn)
                    }
                case .flushing, .draining:
                    kill(conn)
                case .dead:
                    break
                }
                continue
            }
            if conn.sending, conn.sendStarted > 0 {
                let stalled = now - conn.sendStarted
                if stalled > plane.config.sendTimeoutNanos || (waitersExist && conn.leases > 0 && stalled > plane.config.sendStallNanos) {
                    service.metrics.error(.timeout)
                    logger.warning("closing a connection whose client stopped reading its replies", metadata: [
                        "stalledSeconds": "\(stalled / 1_000_000_000)", "buffersHeld": "\(conn.leases)",
                    ])
                    kill(conn)
                }
            }
        }
    }
}

/// Hits of one object counted on a shard since its last report.
struct HitTally {
    let object: ObjectRef
    var hits = 0
    var bytes = 0
    let blocks: Int

    init(object: ObjectRef, blocks: Int) {
        self.object = object
        self.blocks = blocks
    }

    mutating func add(bytes n: Int) {
        hits += 1
        bytes += n
    }
}

/// A READ waiting for a buffer.
struct WaitingRead {
    var connection: Int
    var generation: UInt32
    var requestID: UInt32
    var request: ReadRequest
    /// Skip the DRAM tier (its load of this block just failed).
    var bypassTier = false
    /// Queued because every buffer was taken (not for its connection's share).
    var starved = false
    /// A warm's fill-only READ, in its connection's lane.
    var inLane = false
}

/// A READ in progress on a shard: its lease (parked by number) and its cache read.
struct ReadOp {
    var connection: Int
    var connectionGeneration: UInt32
    var requestID: UInt32
    var request: ReadRequest
    var lease: Int
    /// The DRAM tier slot this op loads (-1: none; then `lease` holds the bytes).
    var tierSlot = -1
    var plan: ReadPlan?
    var pending = 0
    var bytes = 0
    var error: Int32 = 0
    /// The second read could not be submitted: after the first, the request goes to a fill thread.
    var submitFailed = false
    /// Bytes of the requested range already sent while the block was being filled (streaming).
    var streamed = 0
    /// The READ under way in its connection's warm lane: its end starts the lane's next.
    var inLane = false

    init(connection: Int, connectionGeneration: UInt32, requestID: UInt32, request: ReadRequest, lease: Int) {
        self.connection = connection
        self.connectionGeneration = connectionGeneration
        self.requestID = requestID
        self.request = request
        self.lease = lease
    }
}

/// A READ answered by RDMA: where its data goes, what its answer says, and what its buffer
/// waits for. It waits in the shard (`rdmaWaiting`) while the device or the queue pair has no
/// room, then in its connection (`RDMAPendingReply`) until its write completes.
struct RDMAReply {
    let conn: ShardConnection
    let requestID: UInt32
    let crc: UInt32
    let data: UnsafeRawBufferPointer
    let origin: BlockOrigin
    let after: AfterSend
    let descriptor: RDMADescriptor
}

/// An RDMA reply whose write is posted: its chain, and when.
struct RDMAPendingReply {
    let chain: UInt64
    let posted: UInt64
    let reply: RDMAReply
}

/// What a sent reply leaves to do.
enum AfterSend {
    case nothing
    case giveLease(Int)
    case finishFill(lease: Int, PendingFill)
    case unpinTier(Int)
}

/// One frame queued on a connection: a small frame (or TLS records) in owned memory, or a
/// READ_REPLY (head and tag in the connection's head slots, data from a lease).
struct OutFrame {
    var owned: UnsafeMutableRawPointer?
    var ownedCount = 0
    /// The head slot holding this frame's header (its first `headCount` bytes) and trailer (its
    /// `tailCount` bytes at `trailerOffset`); -1: none (a streamed piece of data alone).
    var head = -1
    var headCount = 0
    var data = UnsafeRawBufferPointer(start: nil, count: 0)
    var tailCount = 0
    var requestID: UInt32?
    var after = AfterSend.nothing

    init(copying bytes: [UInt8], requestID: UInt32?) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 8)
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        owned = p
        ownedCount = bytes.count
        self.requestID = requestID
    }

    init(owned: UnsafeMutableRawPointer, count: Int) {
        self.owned = owned
        ownedCount = count
    }

    init(head: Int, headCount: Int, data: UnsafeRawBufferPointer, tailCount: Int, requestID: UInt32?, after: AfterSend) {
        self.head = head
        self.headCount = headCount
        self.data = data
        self.tailCount = tailCount
        self.requestID = requestID
        self.after = after
    }

    /// Data of a streamed READ_REPLY between its header and its trailer.
    init(piece: UnsafeRawBufferPointer) {
        data = piece
    }

    /// A request whose reply went out inside TLS records queued before it (nothing to send).
    init(marker requestID: UInt32) {
        self.requestID = requestID
    }

    var total: Int { owned != nil ? ownedCount : (head >= 0 ? headCount + tailCount : 0) + data.count }
}

/// One connection on a shard: its socket, state machine, send queue and the memory its sends
/// point into (message header, iovecs, reply heads), allocated once when it opens.
final class ShardConnection {
    enum State { case open, flushing, draining, dead }

    let fd: Int32
    let slot: Int
    let generation: UInt32
    /// Its place against `maxConnections`.
    let place: UInt64
    var machine: ServerConnection
    let tls: TLSEngine?
    var state = State.open
    /// Handshake (or farewell) deadline; nil once established.
    var deadline: UInt64?
    /// Its multishot receive is armed (until a completion without `hasMore`).
    var receiving = false
    /// A cancel of that receive is on its way (back-pressure).
    var cancellingReceive = false
    var receiveLater = false
    var sawFirstByte = false
    /// Refused for being over `maxConnections`: it holds no place and only says why.
    var refused = false
    var sending = false
    var sendStarted: UInt64 = 0
    var queue: [OutFrame] = []
    /// The READ op whose reply is streaming (its header is sent, its trailer not yet), and the
    /// frames that wait for it to end.
    var streamOp: Int?
    var deferred: [OutFrame] = []
    /// What a streamed reply's end leaves to do when the connection died first: done once it is
    /// closed, since a send still in flight may read the reply's buffer until then.
    var afterClose: [AfterSend] = []
    var inSend: [OutFrame] = []
    var sentInFirst = 0
    var leases = 0
    /// Its warm lane: a warm's fill-only READs (not hand-over pushes) are filled one at a time.
    let lane = WarmLane()
    /// Zero-copy sends whose notification has not come: their frames' buffers are still read.
    var notifications = 0
    var awaitingNotification: [[OutFrame]] = []
    /// Its RDMA queue pair (RDMA_CONNECT), and the READs whose data it is writing: each is
    /// answered when its write completes. `rdmaLost`: it had one, and it failed.
    var rdma: RDMAQueue?
    var rdmaWrites: [RDMAPendingReply] = []
    var rdmaBusy = false
    var rdmaLost = false
    /// Its queue pair is being made on a fill thread.
    var rdmaConnecting = false

    static let framesPerSend = 16
    /// Two head slots per request in flight (a streamed reply holds one for its header and
    /// another for its trailer), and one more.
    static let headSlots = 2 * Int(WireLimits.maxInFlight) + 1
    static let headStride = 48
    static let trailerOffset = 24
    let message: UnsafeMutablePointer<msghdr>
    private let iovecs: UnsafeMutablePointer<iovec>
    private let heads: UnsafeMutableRawPointer
    private var freeHeads: [Int]

    init(fd: Int32, slot: Int, generation: UInt32, place: UInt64, machine: ServerConnection, tls: TLSEngine?, deadline: UInt64) {
        self.fd = fd
        self.slot = slot
        self.generation = generation
        self.place = place
        self.machine = machine
        self.tls = tls
        self.deadline = deadline
        message = .allocate(capacity: 1)
        message.initialize(to: msghdr())
        iovecs = .allocate(capacity: ShardConnection.framesPerSend * 3)
        heads = .allocate(byteCount: ShardConnection.headSlots * ShardConnection.headStride, alignment: 16)
        freeHeads = Array((0..<ShardConnection.headSlots).reversed())
    }

    deinit {
        message.deallocate()
        iovecs.deallocate()
        heads.deallocate()
    }

    var isOpen: Bool { state == .open }

    func takeHead() -> Int? { freeHeads.popLast() }
    func freeHead(_ i: Int) { freeHeads.append(i) }
    func head(_ i: Int) -> UnsafeMutableRawPointer { heads + i * ShardConnection.headStride }

    /// Fills the message header with iovecs for the frames in `inSend`, past the bytes of the
    /// first already sent; returns the iovec count.
    func buildMessage() -> Int {
        var n = 0
        var skip = sentInFirst
        func add(_ p: UnsafeRawPointer?, _ count: Int) {
            guard count > 0, let p else { return }
            if skip >= count {
                skip -= count
                return
            }
            iovecs[n] = iovec(iov_base: UnsafeMutableRawPointer(mutating: p + skip), iov_len: count - skip)
            skip = 0
            n += 1
        }
        for f in inSend {
            if let owned = f.owned {
                add(owned, f.ownedCount)
            } else {
                let h = f.head >= 0 ? head(f.head) : nil
                add(h, f.headCount)
                add(f.data.baseAddress, f.data.count)
                add(h.map { $0 + ShardConnection.trailerOffset }, f.tailCount)
            }
        }
        message.pointee = msghdr()
        message.pointee.msg_iov = iovecs
        message.pointee.msg_iovlen = n
        return n
    }
}

/// Decides which byte counts of a fill are worth a message to the shard: every `step` bytes,
/// and the count that reaches `end` (called on the fetch thread only).
final class ProgressReporter: @unchecked Sendable {
    private let step: Int
    private let end: Int
    private var last = 0

    init(step: Int, end: Int) {
        self.step = step
        self.end = end
    }

    func worthReporting(_ bytes: Int) -> Bool {
        guard bytes - last >= step || (bytes >= end && last < end) else { return false }
        last = bytes
        return true
    }
}

/// A connection's warm lane: its warm's fill-only READs (not hand-over pushes) are filled one at
/// a time, in the order they came, each as the one before ends, so a warm's connection keeps one
/// store GET going with no round trip to the warm between two. One is under way (from waiting
/// for a buffer until its GET ends, on the shard's ops, or on the fill thread that ended the one
/// before); the rest wait here, bounded by the requests a connection may have in flight, holding
/// no buffer. Shared by the connection's shard and that fill thread.
final class WarmLane: Sendable {
    private struct State {
        var queue = FIFOQueue<WaitingRead>()
        var busy = false
        var closed = false
    }
    private let state = Mutex(State())

    /// `read` waits its turn; it is returned when the lane was idle (start it now).
    func add(_ read: WaitingRead) -> WaitingRead? {
        state.withLock { s in
            guard !s.closed else { return nil }
            if s.busy {
                s.queue.append(read)
                return nil
            }
            s.busy = true
            return read
        }
    }

    /// For whoever ended the READ under way: the next (the lane stays busy), or nil (now idle).
    func next() -> WaitingRead? {
        state.withLock { s in
            guard !s.closed, let read = s.queue.take() else {
                s.busy = false
                return nil
            }
            return read
        }
    }

    /// The connection is closed: what waits is dropped, and nothing more starts.
    func close() {
        state.withLock { s in
            s.closed = true
            s.queue.removeAll()
        }
    }
}
