/// Tags and checks the frames of one session (docs/PROTOCOL.md, "Frame tags"). The system
/// layer's `FrameAuthenticator` is the real one; the state machine sees only this.
public protocol FrameSealer: AnyObject {
    /// Writes the tag of the next frame sent, over `a`, `b` then `c`, to `tag` (`FrameTag.size` bytes).
    func sealFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ c: UnsafeRawBufferPointer, tag: UnsafeMutableRawPointer) -> Bool
    /// Checks the next frame received (`a` then `b`) against `tag`.
    func openFrame(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool
    /// Starts the tag of the next frame sent, over `head`, for a frame whose bytes are sent as
    /// they come (a streamed READ_REPLY). Its place in the sequence is taken now: frames sealed
    /// while it streams come after it, and it is the only stream of the session at a time.
    func beginStream(_ head: UnsafeRawBufferPointer) -> Bool
    /// Adds the next bytes of the streamed frame.
    func continueStream(_ piece: UnsafeRawBufferPointer) -> Bool
    /// Adds the streamed frame's last bytes and writes its tag.
    func finishStream(_ tail: UnsafeRawBufferPointer, tag: UnsafeMutableRawPointer) -> Bool
}

/// A request the worker acts on once the connection is authenticated.
public enum WorkerRequest: Sendable, Equatable {
    case stat(StatRequest)
    case list(ListRequest)
    case read(ReadRequest)
    case members
    /// RDMA_CONNECT: the client's queue pair, to connect one of the worker's to.
    case rdmaConnect(RDMAConnectMessage)
}

/// What the connection's driver does next; the state machine itself does no I/O.
public enum ServerAction: Equatable {
    /// Send this whole frame (tagged when the session has tags).
    case send([UInt8])
    /// The client proved it holds the secret (before AUTH_OK is sent): its connection is trusted.
    case established
    /// Serve a request; its reply may go out in any order, and `finished` must follow it.
    case serve(requestID: UInt32, WorkerRequest)
    /// Send this frame (an ERROR saying why), then close the connection.
    case close([UInt8], status: StatusCode, reason: String)
}

/// One connection of a worker, as a state machine over bytes: bytes in (whatever a receive
/// gave, several frames or part of one), actions out. HELLO → CHALLENGE (with the worker's proof)
/// → AUTH → AUTH_OK → requests, whose replies leave in any order, matched by request id. Frame
/// tags are checked and added here. Anything malformed, in any state, is answered with one ERROR
/// frame and the connection is closed; nothing else is touched.
///
/// Back-pressure: at most `maxInFlight` requests are served at once; frames beyond them stay
/// unparsed here and `wantsInput` turns false, so the driver stops receiving and the client's
/// TCP window fills. A client that does not read its replies holds `maxInFlight` requests and
/// no more.
public struct ServerConnection {
    public enum State: Equatable {
        case awaitingHello
        case awaitingAuth(hello: [UInt8], challenge: ChallengeMessage)
        case ready
        case closed
    }

    public struct Config {
        public var secret: [UInt8]
        public var blockSize: UInt32
        /// The benchmark switch `allowUntaggedFrames`; never for service.
        public var allowsUntaggedFrames = false
        /// The channel authenticates every byte already (TLS): frames carry no tags.
        public var channelAuthenticated = false
        public var maxInFlight: UInt16 = 32
        /// Makes the session's frame sealer from its keys; nil if it cannot.
        public var makeSealer: (SessionKeys) -> (any FrameSealer)?

        public init(secret: [UInt8], blockSize: UInt32, makeSealer: @escaping (SessionKeys) -> (any FrameSealer)?) {
            self.secret = secret
            self.blockSize = blockSize
            self.makeSealer = makeSealer
        }
    }

    public private(set) var state: State = .awaitingHello
    public private(set) var clientName = ""
    public private(set) var sessionKeys: SessionKeys?
    private let config: Config
    private var sealer: (any FrameSealer)?
    /// Bytes received and not parsed yet: part of a frame, or frames held back at the limit.
    private var inbox: [UInt8] = []
    private var inboxStart = 0
    /// Requests served and not yet answered (their replies not yet sent).
    private var inFlight: [UInt32] = []

    public init(_ config: Config) {
        self.config = config
        inFlight.reserveCapacity(Int(config.maxInFlight))
    }

    public var tagSize: Int { sealer == nil ? 0 : FrameTag.size }
    public var isReady: Bool { state == .ready }
    public var isClosed: Bool { state == .closed }
    public var requestsInFlight: Int { inFlight.count }
    /// True until HELLO: the next frame needs a fresh worker nonce.
    public var needsNonce: Bool { state == .awaitingHello }
    /// The largest frame a client may send now (header, payload and tag).
    var maxFrame: Int { FrameHeader.size + Int(WireLimits.maxRequestPayload) + FrameTag.size }
    /// Bytes held unparsed.
    public var heldBytes: Int { inbox.count - inboxStart }

    /// Whether the driver should receive more: not closed, not at the in-flight limit, and not
    /// already holding a frame's worth of unparsed bytes.
    public var wantsInput: Bool {
        state != .closed && inFlight.count < Int(config.maxInFlight) && heldBytes < maxFrame
    }

    /// Takes bytes as they arrived. `nonce` gives the worker's fresh random Nw (only HELLO asks;
    /// nil: the random source failed).
    public mutating func receive(_ bytes: UnsafeRawBufferPointer, nonce: () -> [UInt8]?, into actions: inout [ServerAction]) {
        guard state != .closed, bytes.count > 0 else { return }
        if heldBytes == 0 {
            inbox.removeAll(keepingCapacity: true)
            inboxStart = 0
            let used = parse(bytes, nonce: nonce, into: &actions)
            if used < bytes.count, state != .closed { inbox.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[used...])) }
        } else {
            inbox.append(contentsOf: bytes)
            parseHeld(nonce: nonce, into: &actions)
        }
    }

    /// The reply to `requestID` has been sent (or given up): its place is free, and frames held
    /// back for it are parsed now.
    public mutating func finished(_ requestID: UInt32, nonce: () -> [UInt8]? = { nil }, into actions: inout [ServerAction]) {
        if let i = inFlight.firstIndex(of: requestID) { inFlight.remove(at: i) }
        if heldBytes > 0 { parseHeld(nonce: nonce, into: &actions) }
    }

    private mutating func parseHeld(nonce: () -> [UInt8]?, into actions: inout [ServerAction]) {
        let used = inbox.withUnsafeBytes { all in
            parse(UnsafeRawBufferPointer(rebasing: all[inboxStart...]), nonce: nonce, into: &actions)
        }
        inboxStart += used
        if inboxStart == inbox.count || state == .closed {
            inbox.removeAll(keepingCapacity: inbox.capacity <= 2 * maxFrame)
            inboxStart = 0
        } else if inboxStart > maxFrame {
            inbox.removeFirst(inboxStart)
            inboxStart = 0
        }
    }

    /// Parses whole frames from `bytes` while there is room; returns the bytes used.
    private mutating func parse(_ bytes: UnsafeRawBufferPointer, nonce: () -> [UInt8]?, into actions: inout [ServerAction]) -> Int {
        var at = 0
        while state != .closed, inFlight.count < Int(config.maxInFlight), bytes.count - at >= FrameHeader.size {
            let base = bytes.baseAddress! + at
            let header: FrameHeader
            switch FrameHeader.decode(base, maxPayload: WireLimits.maxRequestPayload + UInt32(tagSize)) {
            case .failure(let e):
                actions.append(headerFailure(e))
                return bytes.count
            case .success(let h): header = h
            }
            let end = FrameHeader.size + Int(header.payloadLength)
            guard bytes.count - at >= end else { break }
            let headerBytes = UnsafeRawBufferPointer(start: base, count: FrameHeader.size)
            var payload = UnsafeRawBufferPointer(start: base + FrameHeader.size, count: Int(header.payloadLength))
            at += end
            if let sealer {
                guard payload.count >= FrameTag.size,
                      sealer.openFrame(headerBytes, UnsafeRawBufferPointer(rebasing: payload.dropLast(FrameTag.size)),
                                       tag: UnsafeRawBufferPointer(rebasing: payload.suffix(FrameTag.size)))
                else {
                    actions.append(fail(header.requestID, .unauthenticated,
                                        "frame \(header.requestID) failed authentication (tampered, replayed or corrupted in transit); closing the connection"))
                    return bytes.count
                }
                payload = UnsafeRawBufferPointer(rebasing: payload.dropLast(FrameTag.size))
            }
            frame(header, payload, nonce: nonce, into: &actions)
        }
        return state == .closed ? bytes.count : at
    }

    private mutating func headerFailure(_ e: FrameHeader.DecodeError) -> ServerAction {
        switch e {
        case .badMagic: return fail(0, .badRequest, "not a Shoal frame (bad magic)")
        case .unsupportedVersion(let v):
            // Written in the peer's version so that its own decoder reads the reason.
            return fail(0, .unsupportedVersion,
                        "client speaks protocol version \(v); this worker speaks version \(FrameHeader.version): run the same Shoal release on both",
                        version: v)
        case .tooLarge(let n):
            return fail(0, .tooLarge, "frame payload of \(n) bytes exceeds the limit of \(WireLimits.maxRequestPayload + UInt32(tagSize))")
        }
    }

    /// One whole frame, its tag (if any) checked and removed.
    private mutating func frame(_ header: FrameHeader, _ payload: UnsafeRawBufferPointer, nonce: () -> [UInt8]?, into actions: inout [ServerAction]) {
        let id = header.requestID
        guard let type = FrameType(rawValue: header.type) else {
            actions.append(fail(id, .badRequest, "unknown frame type \(header.type)"))
            return
        }
        switch state {
        case .closed:
            return
        case .awaitingHello:
            let bytes = Array(payload)
            guard type == .hello, let hello = HelloMessage(decoding: bytes) else {
                actions.append(fail(id, .unauthenticated, "the first frame must be a valid version \(FrameHeader.version) HELLO"))
                return
            }
            let ours = UInt16(FrameHeader.version)
            guard hello.minVersion <= ours, hello.maxVersion >= ours else {
                actions.append(fail(id, .unsupportedVersion,
                                    "client speaks protocol versions \(hello.minVersion)-\(hello.maxVersion); this worker speaks version \(ours)"))
                return
            }
            guard let nw = nonce(), nw.count == MutualAuth.nonceSize else {
                actions.append(fail(id, .internal, "the worker has no fresh nonce for this connection (its random source failed)"))
                return
            }
            if hello.flags & HelloMessage.untaggedFramesFlag != 0 {
                guard config.allowsUntaggedFrames else {
                    actions.append(fail(id, .badRequest,
                                        "the client asked for frames without tags, a benchmark switch this worker does not allow (allowUntaggedFrames)"))
                    return
                }
            }
            clientName = hello.clientName
            let proof = MutualAuth.workerProof(secret: config.secret, hello: bytes, workerNonce: nw)
            let challenge = ChallengeMessage(version: ours, nonce: nw, proof: proof)
            state = .awaitingAuth(hello: bytes, challenge: challenge)
            actions.append(.send(encodeFrame(.challenge, id: id, body: challenge.encoded)))
        case .awaitingAuth(let hello, let challenge):
            guard type == .auth, payload.count == MutualAuth.proofSize else {
                actions.append(fail(id, .unauthenticated, "expected AUTH with a \(MutualAuth.proofSize)-byte proof after the challenge"))
                return
            }
            let expected = MutualAuth.clientProof(secret: config.secret, hello: hello, challenge: challenge.signedPart)
            guard constantTimeEqual(expected, Array(payload)) else {
                actions.append(fail(id, .unauthenticated, "authentication failed: the client's secret does not match the worker's"))
                return
            }
            guard let parsed = HelloMessage(decoding: hello) else {
                actions.append(fail(id, .internal, "lost the HELLO"))
                return
            }
            let keys = MutualAuth.sessionKeys(secret: config.secret, clientNonce: parsed.nonce, workerNonce: challenge.nonce)
            sessionKeys = keys
            let untagged = parsed.flags & HelloMessage.untaggedFramesFlag != 0
            if !config.channelAuthenticated && !untagged {
                // From AUTH_OK on, every frame is tagged.
                guard let s = config.makeSealer(keys) else {
                    actions.append(fail(id, .internal, "the worker cannot tag frames (see its log)"))
                    return
                }
                sealer = s
            }
            state = .ready
            actions.append(.established)
            let ok = AuthOKMessage(blockSize: config.blockSize, maxInFlight: config.maxInFlight)
            actions.append(.send(encodeFrame(.authOK, id: id, body: ok.encoded)))
        case .ready:
            guard !inFlight.contains(id) else {
                actions.append(fail(id, .badRequest, "request id \(id) is already in flight on this connection"))
                return
            }
            switch type {
            case .stat:
                guard let req = StatRequest(decoding: Array(payload)) else {
                    actions.append(fail(id, .badRequest, "malformed STAT frame"))
                    return
                }
                inFlight.append(id)
                actions.append(.serve(requestID: id, .stat(req)))
            case .read:
                guard let req = ReadRequest(decoding: payload) else {
                    actions.append(fail(id, .badRequest, "malformed READ frame"))
                    return
                }
                inFlight.append(id)
                actions.append(.serve(requestID: id, .read(req)))
            case .list:
                guard let req = ListRequest(decoding: Array(payload)) else {
                    actions.append(fail(id, .badRequest, "malformed LIST frame"))
                    return
                }
                inFlight.append(id)
                actions.append(.serve(requestID: id, .list(req)))
            case .members:
                guard payload.isEmpty else {
                    actions.append(fail(id, .badRequest, "malformed MEMBERS frame (it has no payload)"))
                    return
                }
                inFlight.append(id)
                actions.append(.serve(requestID: id, .members))
            case .rdmaConnect:
                guard let req = RDMAConnectMessage(decoding: Array(payload)) else {
                    actions.append(fail(id, .badRequest, "malformed RDMA_CONNECT frame"))
                    return
                }
                inFlight.append(id)
                actions.append(.serve(requestID: id, .rdmaConnect(req)))
            case .readv:
                // Reserved: answered, and the connection goes on.
                actions.append(.send(encodeFrame(.readReply, status: .badRequest, id: id,
                                                 body: Array("READV (batched reads) is not supported by this worker".utf8))))
            default:
                actions.append(fail(id, .badRequest, "frame type \(header.type) is not a request"))
            }
        }
    }

    /// A whole small frame: header, body and (when the session has tags) its tag. An empty array
    /// if the tag could not be made (the caller then closes the connection).
    public mutating func encodeFrame(_ type: FrameType, status: StatusCode = .ok, id: UInt32, body: [UInt8]) -> [UInt8] {
        var bytes = FrameHeader(type: type, status: status, requestID: id, payloadLength: UInt32(body.count + tagSize)).bytes + body
        if let sealer {
            let at = bytes.count
            bytes += [UInt8](repeating: 0, count: FrameTag.size)
            let sealed = bytes.withUnsafeMutableBytes { b in
                sealer.sealFrame(UnsafeRawBufferPointer(rebasing: b[..<at]), ServerConnection.none, ServerConnection.none, tag: b.baseAddress! + at)
            }
            guard sealed else { return [] }
        }
        return bytes
    }

    /// A request's failure as its reply frame (the connection goes on).
    public mutating func errorReply(_ type: FrameType, id: UInt32, _ error: ShoalError) -> [UInt8] {
        encodeFrame(type, status: error.code, id: id, body: Array(error.message.utf8.prefix(WireLimits.maxMessage)))
    }

    private static var none: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }

    /// Writes a READ_REPLY's header (`ReadReplyHead.size` bytes) for `data` to `head`, and its
    /// trailer to `trailer`: the CRC and, when the session has tags, the tag over header, data
    /// and CRC (`ReadReplyTrailer.size + tagSize` bytes). The data is sent from where it lies.
    public mutating func sealReadReply(id: UInt32, crc: UInt32, data: UnsafeRawBufferPointer, head: UnsafeMutableRawPointer,
                                       trailer: UnsafeMutableRawPointer) -> Bool {
        ReadReplyHead.encode(requestID: id, dataCount: data.count, tagSize: tagSize, into: head)
        ReadReplyTrailer.encode(crc: crc, into: trailer)
        guard let sealer else { return true }
        return sealer.sealFrame(UnsafeRawBufferPointer(start: head, count: ReadReplyHead.size), data,
                                UnsafeRawBufferPointer(start: trailer, count: ReadReplyTrailer.size), tag: trailer + ReadReplyTrailer.size)
    }

    /// Starts a READ_REPLY of `count` bytes whose data is sent as it arrives: writes its header
    /// to `head`. The data follows through `continueReadStream`, then `finishReadStream`; frames
    /// sealed meanwhile must be sent after it.
    public mutating func beginReadStream(id: UInt32, count: Int, head: UnsafeMutableRawPointer) -> Bool {
        ReadReplyHead.encode(requestID: id, dataCount: count, tagSize: tagSize, into: head)
        guard let sealer else { return true }
        return sealer.beginStream(UnsafeRawBufferPointer(start: head, count: ReadReplyHead.size))
    }

    /// The next bytes of the streamed READ_REPLY, in order.
    public mutating func continueReadStream(_ piece: UnsafeRawBufferPointer) -> Bool {
        sealer?.continueStream(piece) ?? true
    }

    /// Ends the streamed READ_REPLY: writes its trailer (CRC, then the tag) to `trailer`.
    public mutating func finishReadStream(crc: UInt32, trailer: UnsafeMutableRawPointer) -> Bool {
        ReadReplyTrailer.encode(crc: crc, into: trailer)
        guard let sealer else { return true }
        return sealer.finishStream(UnsafeRawBufferPointer(start: trailer, count: ReadReplyTrailer.size), tag: trailer + ReadReplyTrailer.size)
    }

    /// The driver must close the connection for a reason of its own (its random source failed,
    /// the handshake took too long, shutdown): the frame saying why.
    public mutating func close(_ code: StatusCode, _ message: String) -> ServerAction { fail(0, code, message) }

    private mutating func fail(_ id: UInt32, _ code: StatusCode, _ message: String, version: UInt8 = FrameHeader.version) -> ServerAction {
        let body = Array(message.utf8.prefix(WireLimits.maxMessage))
        // An ERROR closing an established session is tagged (`encodeFrame` tags once the session
        // has tags), so the client can tell it from a relay's; one before the session, or in
        // another version, cannot be.
        let bytes: [UInt8]
        if version == FrameHeader.version {
            bytes = encodeFrame(.error, status: code, id: id, body: body)
        } else {
            var header = FrameHeader(type: .error, status: code, requestID: id, payloadLength: UInt32(body.count))
            header.version = version
            bytes = header.bytes + body
        }
        state = .closed
        inbox = []
        inboxStart = 0
        return .close(bytes, status: code, reason: message)
    }
}
