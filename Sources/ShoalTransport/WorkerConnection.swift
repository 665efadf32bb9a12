#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys

/// The client side of one TCP connection to a worker: the mutual handshake (the worker proves
/// it holds the secret before this side proves anything), then STAT and pipelined READs whose
/// replies may come back in any order, matched by request id. Every frame after the handshake
/// carries a tag under the session key (or the channel is TLS), so a relay can neither change a
/// reply nor add a request. Blocking I/O with deadlines; no threads.
///
/// Receiving: one large receive drains what has arrived into a staging buffer, and small
/// replies are copied from it to their callers (copying 4 KiB costs less than a syscall); a
/// large reply's data goes straight from the socket into its caller's buffer.
public final class WorkerConnection: @unchecked Sendable {
    public let endpoint: Endpoint
    public let socket: TCPSocket
    public let blockSize: UInt32
    /// Requests the worker lets this connection keep in flight.
    public let maxInFlight: Int
    private var nextRequestID: UInt32 = 1
    public let timeoutNanos: UInt64
    /// Benchmarks only: take READ_NODATA replies (a worker with `answerWithoutData`) as answered,
    /// leaving the buffer as it was. Otherwise such a reply is an error naming the switch.
    public var acceptsNoData = false
    /// Tags this side's frames and checks the worker's; nil over TLS, which authenticates already.
    private let authenticator: FrameAuthenticator?
    private var tagSize: Int { authenticator == nil ? 0 : FrameTag.size }
    /// The worker closed this connection with an ERROR frame, or a reply failed its tag: the
    /// connection must not be used again.
    public private(set) var isBroken = false
    /// READs sent and not yet answered: where each one's bytes go.
    private var pending: [Pending] = []
    /// Its RDMA queue pair (`attachRDMA`): READs with data then carry a descriptor of their
    /// buffer, and the worker writes the data there.
    private var rdmaChannel: RDMAChannel?
    private let staging: UnsafeMutableRawPointer
    /// A READ_REPLY's head and tag as they arrive.
    private let replyHead = UnsafeMutableRawPointer.allocate(byteCount: ReadReplyHead.size + ReadReplyTrailer.size + FrameTag.size, alignment: 16)
    private static let stagingSize = 256 * 1024
    private var stagedStart = 0
    private var stagedEnd = 0
    /// Reusable bytes of one outgoing frame.
    private var outgoing: [UInt8] = []

    /// Connects (through TLS when `tls` is given) and runs the mutual handshake with `secret`.
    /// `untaggedFrames` asks a worker running with the benchmark switch `allowUntaggedFrames` for
    /// frames without tags, to measure what the tags cost; never for service.
    public init(endpoint: Endpoint, secret: [UInt8], clientName: String = "shoal-client", timeoutMillis: Int32 = 10_000,
                connectTimeoutMillis: Int32? = nil, tls: TLSContext? = nil, untaggedFrames: Bool = false) throws(ShoalError) {
        self.endpoint = endpoint
        self.timeoutNanos = UInt64(timeoutMillis) * 1_000_000
        let nonce: [UInt8]
        do { nonce = try secureRandomBytes(MutualAuth.nonceSize) } catch {
            throw ShoalError(.internal, "cannot open a connection to worker \(endpoint): \(error)")
        }
        let socket: TCPSocket
        do {
            socket = try TCPSocket.connect(endpoint, timeoutMillis: connectTimeoutMillis ?? timeoutMillis)
        } catch {
            throw ShoalError(.connectionFailed, "cannot connect to worker \(endpoint): \(error)")
        }
        do { try socket.setBufferSizes(8 << 20) } catch {
            throw ShoalError(.connectionFailed, "cannot set up the connection to worker \(endpoint): \(error)")
        }
        let deadline = monotonicNanos() + timeoutNanos
        if let tls {
            do { try socket.startTLS(tls, host: endpoint.host, deadline: deadline) } catch {
                throw ShoalError(.connectionFailed, "TLS handshake with worker \(endpoint) failed: \(error.message) (is the worker running with TLS, and is its certificate signed by the client's CA file?)")
            }
        }
        var handshake = ClientHandshake(secret: secret, nonce: nonce, clientName: clientName, worker: endpoint.description,
                                        untaggedFrames: untaggedFrames)
        var action = handshake.start()
        var authenticator: FrameAuthenticator?
        var ok = AuthOKMessage(blockSize: 0, maxInFlight: 1)
        while true {
            switch action {
            case .send(let h, let body):
                try WorkerConnection.io(endpoint) { try socket.send(h.bytes + body, deadline: deadline) }
                if h.type == FrameType.auth.rawValue, !socket.isTLS, !untaggedFrames, let keys = handshake.sessionKeys {
                    do { authenticator = try FrameAuthenticator(keys: keys, role: .client) } catch {
                        throw ShoalError(.internal, "cannot set up frame tags for worker \(endpoint): \(error)")
                    }
                }
            case .ready(let message):
                ok = message
            case .fail(let error):
                throw error
            }
            if case .ready = action { break }
            // AUTH_OK is the worker's first tagged frame: it shows the worker derived the same keys.
            let (h, body) = try WorkerConnection.receiveFrame(socket, endpoint, authenticator: authenticator,
                                                              maxPayload: 64 * 1024, deadline: deadline, allowUntaggedRefusal: true)
            action = handshake.received(h, payload: body)
        }
        do { try socket.setReceiveTimeout(nanos: timeoutNanos) } catch {
            throw ShoalError(.connectionFailed, "cannot set up the connection to worker \(endpoint): \(error)")
        }
        self.socket = socket
        self.forkGeneration = ForkGeneration.current
        self.authenticator = authenticator
        self.blockSize = ok.blockSize
        self.maxInFlight = Int(ok.maxInFlight)
        staging = .allocate(byteCount: WorkerConnection.stagingSize, alignment: 64)
    }

    struct Pending {
        /// Its id on the wire, and the id its caller knows it by (another when it was sent again).
        var id: UInt32
        var callerID: UInt32
        var buffer: UnsafeMutableRawPointer
        var length: Int
        /// A fill-only or probe READ: answered with READ_NODATA.
        var noData: Bool
        /// An RDMA READ: the registration of its buffer (until its answer, or the queue pair goes),
        /// and the READ itself (set for every READ asked by RDMA; sent again over
        /// TCP if the data in memory does not match its CRC32C).
        var registration: ClientRDMA.Registration?
        var request: ReadRequest?
        /// Pointed elsewhere (`redirect`): a hedged READ that lost.
        var redirected = false

        init(id: UInt32, callerID: UInt32? = nil, buffer: UnsafeMutableRawPointer, length: Int, noData: Bool,
             registration: ClientRDMA.Registration? = nil, request: ReadRequest? = nil) {
            self.id = id
            self.callerID = callerID ?? id
            self.buffer = buffer
            self.length = length
            self.noData = noData
            self.registration = registration
            self.request = request
        }
    }

    deinit {
        closeRDMA()
        staging.deallocate()
        replyHead.deallocate()
    }

    /// Closes the connection. In the process that made it, the socket is shut down first, so the
    /// worker sees the end at once even while forked children still hold copies of it; a child
    /// only closes its copy (shutting it down would cut the parent's connection).
    public func close() {
        closeRDMA()
        if isOwnedByThisProcess { socket.shutdown() }
        socket.close()
    }

    /// The process that made this connection (its fork generation: no syscall per check). A
    /// forked child shares its socket and its frame sequence with the parent, so it must never
    /// use it: pools check this before lending one.
    private let forkGeneration: Int
    public var isOwnedByThisProcess: Bool { forkGeneration == ForkGeneration.current }

    static func io<T>(_ endpoint: Endpoint, _ body: () throws -> T) throws(ShoalError) -> T {
        do { return try body() } catch let e as SysError {
            throw failure(e, endpoint)
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(error)")
        }
    }

    /// Receives one small frame whole; with `authenticator`, checks and removes its tag. Only in
    /// the handshake (`allowUntaggedRefusal`) is an untagged ERROR taken: a worker that refuses
    /// AUTH has no session keys yet, and a refusal cannot make anything succeed.
    static func receiveFrame(_ socket: TCPSocket, _ endpoint: Endpoint, authenticator: FrameAuthenticator?, maxPayload: UInt32,
                             deadline: UInt64, allowUntaggedRefusal: Bool = false) throws(ShoalError) -> (FrameHeader, [UInt8]) {
        let raw = try io(endpoint) { try socket.receive(count: FrameHeader.size, deadline: deadline) }
        let header = try decodeHeader(raw, endpoint, maxPayload: maxPayload)
        let payload = try io(endpoint) { try socket.receive(count: Int(header.payloadLength), deadline: deadline) }
        return try opened(header, raw: raw, payload: payload, socket, endpoint, authenticator: authenticator,
                          allowUntaggedRefusal: allowUntaggedRefusal)
    }

    /// A small frame received whole, its tag (with `authenticator`) checked and removed. A frame
    /// that fails its tag closes the connection and is thrown as `tampered`.
    static func opened(_ header: FrameHeader, raw: [UInt8], payload: [UInt8], _ socket: TCPSocket, _ endpoint: Endpoint,
                       authenticator: FrameAuthenticator?, allowUntaggedRefusal: Bool = false) throws(ShoalError) -> (FrameHeader, [UInt8]) {
        guard let authenticator else { return (header, payload) }
        guard authenticator.open(header: raw, payload: payload) else {
            if allowUntaggedRefusal && header.type == FrameType.error.rawValue && header.status != 0 { return (header, payload) }
            socket.close()
            throw tampered(endpoint)
        }
        var h = header
        h.payloadLength -= UInt32(FrameTag.size)
        return (h, Array(payload.dropLast(FrameTag.size)))
    }

    /// Sends one frame, tagged when the session has frame tags: header, payload and tag built in
    /// one reused buffer and sent with one call.
    private func sendFrame(type: FrameType, id: UInt32, count: Int, deadline: UInt64,
                           _ write: (UnsafeMutableRawBufferPointer) -> Void) throws(ShoalError) {
        let total = FrameHeader.size + count + tagSize
        if outgoing.count < total { outgoing = [UInt8](repeating: 0, count: max(total, 2048)) }
        let sealed = outgoing.withUnsafeMutableBytes { b -> Bool in
            FrameHeader(type: type, requestID: id, payloadLength: UInt32(count + tagSize)).encode(into: b.baseAddress!)
            write(UnsafeMutableRawBufferPointer(rebasing: b[FrameHeader.size..<FrameHeader.size + count]))
            guard let authenticator else { return true }
            return authenticator.seal(UnsafeRawBufferPointer(rebasing: b[..<(FrameHeader.size + count)]), UnsafeRawBufferPointer(start: nil, count: 0),
                                      tag: b.baseAddress! + FrameHeader.size + count)
        }
        guard sealed else { throw ShoalError(.internal, "cannot tag a frame for worker \(endpoint)") }
        let result = outgoing.withUnsafeBytes { b in
            Result { () throws(SysError) in try socket.send([UnsafeRawBufferPointer(rebasing: b[..<total])], deadline: deadline) }
        }
        if case .failure(let error) = result {
            isBroken = true
            throw WorkerConnection.failure(error, endpoint)
        }
    }

    static func failure(_ error: SysError, _ endpoint: Endpoint) -> ShoalError {
        if error.errno == ETIMEDOUT { return ShoalError(.timeout, "worker \(endpoint) did not answer in time") }
        return ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(error)")
    }

    static func unexpected(_ h: FrameHeader, _ payload: [UInt8], _ endpoint: Endpoint, _ wanted: String) -> ShoalError {
        if h.status != 0 {
            let code = StatusCode(rawValue: h.status) ?? .internal
            return ShoalError(code, "worker \(endpoint): \(String(decoding: payload, as: UTF8.self))")
        }
        return ShoalError(.badRequest, "worker \(endpoint) sent frame type \(h.type) where \(wanted) was expected")
    }

    private func takeID() -> UInt32 {
        defer { nextRequestID = nextRequestID &+ 1 == 0 ? 1 : nextRequestID &+ 1 }
        return nextRequestID
    }

    /// READs sent and not yet answered.
    public var inFlight: Int { pending.count }

    /// True when a reply may be read without waiting (bytes already staged, or TLS holding some):
    /// `poll` on the socket cannot see them.
    public var hasBufferedReply: Bool { stagedEnd > stagedStart || socket.hasBufferedData }

    /// STAT: the object's current size and etag as the worker sees it. Only on a connection with
    /// no READs in flight.
    public func stat(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> StatReply {
        let body = try exchange(.stat, StatRequest(object: object, revalidate: revalidate).encoded, expecting: .statReply, "STAT_REPLY")
        guard let reply = StatReply(decoding: body) else { throw malformed("STAT_REPLY") }
        return reply
    }

    /// MEMBERS: the view the worker routes by (epoch 0 and no members: it has none). Only on a
    /// connection with no READs in flight.
    public func members() throws(ShoalError) -> MembershipView {
        let body = try exchange(.members, [], expecting: .membersReply, "MEMBERS_REPLY", maxPayload: 16 << 20)
        guard let view = MembersReply.decode(body) else { throw malformed("MEMBERS_REPLY") }
        return view
    }

    /// LIST: one page of the keys under `prefix`, as the worker's store lists them. Only on a
    /// connection with no READs in flight.
    public func list(_ request: ListRequest) throws(ShoalError) -> ObjectListing {
        let body = try exchange(.list, request.encoded, expecting: .listReply, "LIST_REPLY", maxPayload: 4 << 20)
        guard let listing = ListReply.decode(body) else { throw malformed("LIST_REPLY") }
        return listing
    }

    /// READ by name (flag bit 3): the worker resolves `object`'s version and answers it, then up
    /// to `length` bytes (1 up to a block) from the object's start into `buffer`. Returns the
    /// version and the bytes read (fewer than `length` where the object ends). Only on a
    /// connection with no READs in flight.
    public func readResolving(_ object: ObjectRef, blockSize: UInt32, length: Int, into buffer: UnsafeMutableRawPointer,
                              epoch: UInt64) throws(ShoalError) -> (StatReply, Int) {
        guard length > 0, length <= Int(blockSize) else {
            throw ShoalError(.badRequest, "a read by name asks for 1 byte up to a block (\(blockSize)), not \(length)")
        }
        let key = BlockKey(object: object, etag: "", objectSize: UInt64(blockSize), blockSize: blockSize, index: 0)
        let request = ReadRequest(block: key, offset: 0, length: UInt32(length), flags: ReadRequest.resolveFlag, epoch: epoch)
        let deadline = monotonicNanos() + timeoutNanos
        let id = takeID()
        try sendFrame(type: .read, id: id, count: request.encodedCount, deadline: deadline) { b in request.encode(into: b) }
        // A refusal comes as the READ_REPLY's status (the connection stays in step).
        let body = try receiveReply(id, expecting: .statReply, "STAT_REPLY", maxPayload: 64 * 1024, deadline: deadline)
        guard let reply = StatReply(decoding: body) else {
            isBroken = true
            throw malformed("STAT_REPLY")
        }
        let n = Int(min(UInt64(length), reply.version.size, UInt64(reply.blockSize)))
        pending.append(Pending(id: id, buffer: buffer, length: n, noData: false))
        try receiveRead(id: id)
        return (reply, n)
    }

    /// A reply that does not decode (callers close the connection on `bad_request`).
    private func malformed(_ name: String) -> ShoalError {
        ShoalError(.badRequest, "worker \(endpoint) sent a malformed \(name)")
    }

    /// One small request and its reply's payload (status 0), on a connection with nothing else in
    /// flight; a status reply is thrown as the worker's error.
    private func exchange(_ type: FrameType, _ payload: [UInt8], expecting replyType: FrameType, _ name: String,
                          maxPayload: UInt32 = 64 * 1024) throws(ShoalError) -> [UInt8] {
        let deadline = monotonicNanos() + timeoutNanos
        let id = takeID()
        try sendFrame(type: type, id: id, count: payload.count, deadline: deadline) { b in
            payload.withUnsafeBytes { if $0.count > 0 { b.copyMemory(from: $0) } }
        }
        return try receiveReply(id, expecting: replyType, name, maxPayload: maxPayload, deadline: deadline)
    }

    /// The payload of the reply to request `id`, of `replyType`. An ERROR frame, a reply to
    /// another request or one that cannot be read breaks the connection; a reply with a status
    /// (the worker's refusal) is thrown and leaves it usable.
    private func receiveReply(_ id: UInt32, expecting replyType: FrameType, _ name: String, maxPayload: UInt32,
                              deadline: UInt64) throws(ShoalError) -> [UInt8] {
        let h: FrameHeader
        let body: [UInt8]
        do throws(ShoalError) { (h, body) = try receiveSmall(deadline: deadline, maxPayload: maxPayload) } catch {
            isBroken = true
            throw error
        }
        if h.type == FrameType.error.rawValue {
            // The worker closed the connection, saying why.
            isBroken = true
            throw WorkerConnection.unexpected(h, body, endpoint, name)
        }
        guard h.requestID == id else {
            isBroken = true
            throw ShoalError(.connectionFailed, "worker \(endpoint) answered request \(h.requestID), expected \(id)")
        }
        guard h.type == replyType.rawValue, h.status == 0 else { throw WorkerConnection.unexpected(h, body, endpoint, name) }
        return body
    }

    /// Sends a READ without waiting for its reply, which lands in `buffer` (`length` bytes) when
    /// `receiveNext` takes it; returns its request id. At most `maxInFlight` at once.
    public func sendRead(_ request: ReadRequest, into buffer: UnsafeMutableRawPointer, length: Int) throws(ShoalError) -> UInt32 {
        guard pending.count < maxInFlight else {
            throw ShoalError(.badRequest, "\(maxInFlight) READs already in flight on this connection to worker \(endpoint)")
        }
        let id = takeID()
        let noData = request.isFillOnly || request.isProbe
        var request = request
        var registration: ClientRDMA.Registration?
        if let channel = rdmaChannel, !channel.closed, !noData, length > 0, channel.rdma.isUsable {
            do {
                let r = try channel.rdma.acquire(buffer, count: length)
                registration = r
                request = request.with(rdma: RDMADescriptor(address: UInt64(UInt(bitPattern: buffer)), rkey: r.region.rkey, length: UInt32(length)))
            } catch {
                // The buffer cannot be registered (the locked-memory limit, say): this READ goes over TCP.
                channel.rdma.count { $0.fallbacks += 1 }
            }
        }
        do {
            try sendFrame(type: .read, id: id, count: request.encodedCount, deadline: monotonicNanos() + timeoutNanos) { b in
                request.encode(into: b)
            }
        } catch {
            if let registration { rdmaChannel?.rdma.release(registration) }
            throw error
        }
        pending.append(Pending(id: id, buffer: buffer, length: length, noData: noData, registration: registration,
                               request: registration == nil ? nil : request))
        return id
    }

    // MARK: RDMA

    /// Whether READs on this connection ask for their data by RDMA now.
    public var usesRDMA: Bool { rdmaChannel.map { !$0.closed } ?? false }
    /// It had RDMA and its queue pair is gone (a failed write, or a hedged READ let go): it is
    /// closed rather than pooled, so the next connection asks again.
    public var lostRDMA: Bool { rdmaChannel?.closed ?? false }
    /// RDMA failed on it (the worker answered a READ asked by RDMA over TCP).
    public private(set) var rdmaFailed = false

    /// Connects a queue pair of `rdma`'s device to one of the worker's (RDMA_CONNECT), on a
    /// connection with nothing in flight. From then on READs with data carry a descriptor of
    /// their buffer. Throws (and the connection stays on TCP, usable) where the worker or this
    /// host cannot.
    public func attachRDMA(_ rdma: ClientRDMA) throws(ShoalError) {
        guard rdmaChannel == nil, pending.isEmpty, rdma.isUsable else {
            throw ShoalError(.badRequest, "RDMA is set up on a new connection with nothing in flight, in the process that opened the device")
        }
        let queuePair: any RDMAQueuePairDriver
        do { queuePair = try rdma.device.makeQueuePair(depth: 4, acceptsWrites: true) } catch {
            throw ShoalError(.connectionFailed, "cannot make an RDMA queue pair on \(rdma.device.name): \(error)")
        }
        let address = queuePair.address
        let mine = RDMAConnectMessage(queuePair: address.queuePair, gid: address.gid, psn: address.psn)
        do throws(ShoalError) {
            let body = try exchange(.rdmaConnect, mine.encoded, expecting: .rdmaConnectReply, "RDMA_CONNECT_REPLY")
            guard let theirs = RDMAConnectMessage(decoding: body) else { throw malformed("RDMA_CONNECT_REPLY") }
            do { try queuePair.connect(to: RDMAQueuePairAddress(queuePair: theirs.queuePair, gid: theirs.gid, psn: theirs.psn)) } catch {
                throw ShoalError(.connectionFailed, "cannot connect to worker \(endpoint)'s RDMA queue pair: \(error)")
            }
        } catch {
            queuePair.close()
            throw error
        }
        rdmaChannel = RDMAChannel(rdma: rdma, queuePair: queuePair)
    }

    /// Destroys the queue pair (no write lands in a caller's memory after this) and drops the
    /// registrations of READs in flight: a retransmission of a write meant for them that reached
    /// a later queue pair of the same number would find their rkeys gone. Their answers come
    /// over TCP.
    private func closeRDMA() {
        guard let channel = rdmaChannel else { return }
        channel.close()
        for i in pending.indices {
            if let r = pending[i].registration {
                channel.rdma.invalidate(r)
                channel.rdma.release(r)
                pending[i].registration = nil
            }
        }
    }

    /// Points READ `id`'s reply at `buffer` instead (a hedged read's loser: its reply must not
    /// land in the caller's memory once the winner's bytes are there).
    public func redirect(_ id: UInt32, to buffer: UnsafeMutableRawPointer) {
        guard let i = pending.firstIndex(where: { $0.callerID == id }) else { return }
        pending[i].buffer = buffer
        pending[i].redirected = true
        // A worker's write cannot be pointed elsewhere: the queue pair goes (not a failure: the
        // connection is closed after this read, not pooled), and the answer comes over TCP.
        if pending[i].request != nil, usesRDMA { closeRDMA() }
    }

    /// Takes the next reply, whichever READ it answers, and returns that READ's id with its
    /// outcome: its bytes are in its buffer, checked against the reply's CRC32C (and tag), or the
    /// worker's error for it (the connection stays usable). A fill-only or probe READ's success
    /// says where its block came from (nil for a READ answered with data). Errors that end the
    /// connection are thrown; a reply that fails its tag is never delivered (the buffer's range
    /// is zeroed).
    public func receiveNext() throws(ShoalError) -> (UInt32, Result<BlockOrigin?, ShoalError>) {
        guard !pending.isEmpty else { throw ShoalError(.internal, "no READ in flight on this connection to worker \(endpoint)") }
        let deadline = monotonicNanos() + timeoutNanos * 3
        do throws(ShoalError) {
          while true {
            try stage(FrameHeader.size, deadline: deadline)
            let header = try WorkerConnection.decodeHeader(staging + stagedStart, endpoint,
                                                           maxPayload: WireLimits.maxResponsePayload + UInt32(tagSize))
            if header.type == FrameType.error.rawValue {
                // The worker closed the connection, saying why.
                let (h, payload) = try receiveSmall(deadline: deadline)
                isBroken = true
                throw WorkerConnection.unexpected(h, payload, endpoint, "READ_REPLY")
            }
            guard let index = pending.firstIndex(where: { $0.id == header.requestID }) else {
                throw ShoalError(.connectionFailed, "worker \(endpoint) answered request \(header.requestID), which is not in flight")
            }
            let target = pending[index]
            if header.status == 0 && header.type == FrameType.readReply.rawValue {
                if target.request != nil, !target.redirected {
                    // Asked by RDMA, answered over TCP: the worker's write failed, and it has
                    // stopped RDMA on this connection.
                    rdmaChannel?.rdma.count { $0.fallbacks += 1 }
                    rdmaFailed = true
                    closeRDMA()
                }
                try receiveData(header, into: target.buffer, length: target.length, deadline: deadline)
                pending.remove(at: index)
                return (target.callerID, .success(nil))
            }
            let (h, payload) = try receiveSmall(deadline: deadline)
            pending.remove(at: index)
            if let r = target.registration { rdmaChannel?.rdma.release(r) }
            if h.type == FrameType.error.rawValue {
                isBroken = true
                throw WorkerConnection.unexpected(h, payload, endpoint, "READ_REPLY")
            }
            if h.status == 0 && h.type == FrameType.readNoData.rawValue, let reply = payload.withUnsafeBytes({ NoDataReply(decoding: $0) }) {
                let byRDMA = target.request != nil
                guard byRDMA || target.noData || acceptsNoData else {
                    return (target.callerID, .failure(ShoalError(.badRequest, "worker \(endpoint) runs with answerWithoutData, a benchmark switch, and sent no data")))
                }
                guard Int(reply.length) == target.length else {
                    return (target.callerID, .failure(ShoalError(.badRequest, "worker \(endpoint) answered for \(reply.length) bytes where \(target.length) were asked")))
                }
                guard byRDMA, let channel = rdmaChannel else { return (target.callerID, .success(reply.origin)) }
                // The worker wrote the data into the buffer, and its write completed before this
                // answer was sent: the memory must match the answer's CRC32C (which the frame's
                // tag covers).
                if target.redirected { return (target.callerID, .success(nil)) }
                if CRC32C.checksum(UnsafeRawBufferPointer(start: target.buffer, count: target.length)) == reply.crc {
                    channel.rdma.count { $0.rdmaReads += 1 }
                    return (target.callerID, .success(nil))
                }
                // Not what was written: the buffer's pages may have been mapped anew since they
                // were registered. The registration goes, and the READ goes again over TCP under
                // a fresh id (the worker may not have let the first one go yet).
                if let registration = target.registration { channel.rdma.invalidate(registration) }
                channel.rdma.count { $0.fallbacks += 1 }
                guard let again = target.request?.with(rdma: nil) else {
                    return (target.callerID, .failure(ShoalError(.checksumMismatch, "data RDMA-written by worker \(endpoint) failed its CRC32C check")))
                }
                let retry = takeID()
                try sendFrame(type: .read, id: retry, count: again.encodedCount, deadline: monotonicNanos() + timeoutNanos) { b in again.encode(into: b) }
                pending.append(Pending(id: retry, callerID: target.callerID, buffer: target.buffer, length: target.length, noData: false))
                continue
            }
            return (target.callerID, .failure(WorkerConnection.unexpected(h, payload, endpoint, "READ_REPLY")))
          }
        } catch {
            if error.code == .tampered || error.code == .connectionFailed || error.code == .timeout || error.code == .unsupportedVersion {
                isBroken = true
            }
            // Whatever is still in flight must not land in its caller's memory once this returns.
            if isBroken { closeRDMA() }
            throw error
        }
    }

    /// Waits for the reply to READ `id` (other replies that come first land in their own
    /// buffers); throws that READ's error.
    public func receiveRead(id: UInt32) throws(ShoalError) {
        var firstError: ShoalError?
        while pending.contains(where: { $0.callerID == id }) {
            let (got, result) = try receiveNext()
            if case .failure(let e) = result {
                if got == id { throw e }
                firstError = firstError ?? e
            }
        }
        if let firstError { throw firstError }
    }

    static func decodeHeader(_ p: UnsafeRawPointer, _ endpoint: Endpoint, maxPayload: UInt32) throws(ShoalError) -> FrameHeader {
        switch FrameHeader.decode(p, maxPayload: maxPayload) {
        case .success(let h): return h
        case .failure(.unsupportedVersion(let v)):
            throw ShoalError(.unsupportedVersion, "worker \(endpoint) speaks protocol version \(v); this client speaks version \(FrameHeader.version): run the same Shoal release on both")
        case .failure(let e):
            throw ShoalError(.connectionFailed, "worker \(endpoint) sent a bad frame: \(e)")
        }
    }

    static func decodeHeader(_ raw: [UInt8], _ endpoint: Endpoint, maxPayload: UInt32) throws(ShoalError) -> FrameHeader {
        let r = raw.withUnsafeBytes { p in Result { () throws(ShoalError) in try decodeHeader(p.baseAddress!, endpoint, maxPayload: maxPayload) } }
        return try r.get()
    }

    static func tampered(_ endpoint: Endpoint) -> ShoalError {
        ShoalError(.tampered, "reply from worker \(endpoint) failed authentication (tampered or corrupted in transit); its bytes were discarded and the connection closed")
    }

    /// Makes at least `count` bytes staged (a frame head), receiving what has arrived.
    private func stage(_ count: Int, deadline: UInt64) throws(ShoalError) {
        guard stagedEnd - stagedStart < count else { return }
        if stagedStart > 0 {
            let n = stagedEnd - stagedStart
            if n > 0 { staging.copyMemory(from: staging + stagedStart, byteCount: n) }
            stagedStart = 0
            stagedEnd = n
        }
        while stagedEnd < count {
            do {
                stagedEnd += try socket.receiveSome(into: staging + stagedEnd, max: stageLimit(count), deadline: deadline)
            } catch {
                throw WorkerConnection.failure(error, endpoint)
            }
        }
    }

    /// How much one receive into staging may take when `count` bytes must be staged: what is
    /// missing, or 4 KiB when that is less (a few small frames in one call), never a large
    /// payload behind them, which `take` then receives straight into its destination.
    private func stageLimit(_ count: Int) -> Int {
        min(WorkerConnection.stagingSize - stagedEnd, max(count - stagedEnd, 4096))
    }

    /// Copies `count` bytes of the stream to `p`, then `count2` to `q` (a READ_REPLY's data and
    /// its trailer): staged ones first, the rest straight from the socket, in one receive.
    private func take(into p: UnsafeMutableRawPointer, count: Int, then q: UnsafeMutableRawPointer? = nil, count count2: Int = 0,
                      deadline: UInt64) throws(ShoalError) {
        let staged = min(count, stagedEnd - stagedStart)
        if staged > 0 {
            p.copyMemory(from: staging + stagedStart, byteCount: staged)
            stagedStart += staged
        }
        guard count > staged else {
            if let q, count2 > 0 { try take(into: q, count: count2, deadline: deadline) }
            return
        }
        do { try socket.receive(into: p + staged, count: count - staged, then: q, count: count2, deadline: deadline) } catch {
            throw WorkerConnection.failure(error, endpoint)
        }
    }

    private func takeBytes(_ count: Int, deadline: UInt64) throws(ShoalError) -> [UInt8] {
        guard count > 0 else { return [] }
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 8)
        defer { p.deallocate() }
        try take(into: p, count: count, deadline: deadline)
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Receives one small frame whole (STAT_REPLY, an error reply, READ_NODATA, ERROR) and checks
    /// and removes its tag.
    private func receiveSmall(deadline: UInt64, maxPayload: UInt32 = 64 * 1024) throws(ShoalError) -> (FrameHeader, [UInt8]) {
        try stage(FrameHeader.size, deadline: deadline)
        let header = try WorkerConnection.decodeHeader(staging + stagedStart, endpoint, maxPayload: maxPayload)
        let raw = try takeBytes(FrameHeader.size, deadline: deadline)
        let payload = try takeBytes(Int(header.payloadLength), deadline: deadline)
        return try WorkerConnection.opened(header, raw: raw, payload: payload, socket, endpoint, authenticator: authenticator)
    }

    /// A READ_REPLY: data straight into the caller's buffer, then the CRC and (with tags) the tag,
    /// which is checked over the header, the data and the CRC before the data counts as received.
    private func receiveData(_ header: FrameHeader, into buffer: UnsafeMutableRawPointer, length: Int, deadline: UInt64) throws(ShoalError) {
        guard Int(header.payloadLength) == length + ReadReplyTrailer.size + tagSize else {
            throw ShoalError(.connectionFailed, "worker \(endpoint) sent \(Int(header.payloadLength) - ReadReplyTrailer.size - tagSize) bytes where \(length) were asked")
        }
        let head = replyHead
        let trailer = replyHead + ReadReplyHead.size
        let tag = trailer + ReadReplyTrailer.size
        try take(into: head, count: ReadReplyHead.size, deadline: deadline)
        try take(into: buffer, count: length, then: trailer, count: ReadReplyTrailer.size + tagSize, deadline: deadline)
        let data = UnsafeRawBufferPointer(start: buffer, count: length)
        if let authenticator {
            let ok = authenticator.open(UnsafeRawBufferPointer(start: head, count: ReadReplyHead.size), data,
                                        UnsafeRawBufferPointer(start: trailer, count: ReadReplyTrailer.size),
                                        tag: UnsafeRawBufferPointer(start: tag, count: FrameTag.size))
            guard ok else {
                memset(buffer, 0, length)
                isBroken = true
                socket.close()
                throw WorkerConnection.tampered(endpoint)
            }
        }
        let crc = ReadReplyTrailer.crc(trailer)
        let actual = CRC32C.checksum(data)
        guard actual == crc else {
            throw ShoalError(.checksumMismatch, "data from worker \(endpoint) failed its CRC32C check (sent \(crc), got \(actual))")
        }
    }
}
