/// A request the worker acts on once the connection is authenticated.
public enum WorkerRequest: Sendable, Equatable {
    case stat(StatRequest)
    case read(ReadRequest)
}

/// What the connection loop does next; the state machine itself does no I/O.
public enum ServerAction: Sendable, Equatable {
    /// Send this frame and go on reading.
    case send(FrameHeader, [UInt8])
    /// Send this error frame, then close the connection.
    case fail(FrameHeader, [UInt8])
    /// Serve a request (authenticated).
    case serve(requestID: UInt32, WorkerRequest)
}

/// The server side of one connection: HELLO → CHALLENGE (with the worker's proof) → AUTH →
/// requests. Anything else, in any state, is answered with an ERROR frame and the connection is
/// closed. Frame tags are checked and added by the connection loop with `sessionKeys`; this
/// machine sees payloads without them.
public struct ServerConnectionState: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingHello
        case awaitingAuth(hello: [UInt8], challenge: ChallengeMessage)
        case ready
        case closed
    }

    public private(set) var state: State = .awaitingHello
    public private(set) var clientName = ""
    /// The session's keys, once the client has proved itself.
    public private(set) var sessionKeys: SessionKeys?
    /// False when the client asked for frames without tags and the worker allows it (a
    /// benchmark switch): then the session key is derived but not used.
    public private(set) var framesTagged = true
    private let secret: [UInt8]
    private let blockSize: UInt32
    private let allowsUntaggedFrames: Bool

    /// `allowsUntaggedFrames` is the benchmark switch `allowUntaggedFrames`; never for service.
    public init(secret: [UInt8], blockSize: UInt32, allowsUntaggedFrames: Bool = false) {
        self.secret = secret
        self.blockSize = blockSize
        self.allowsUntaggedFrames = allowsUntaggedFrames
    }

    /// The largest payload to accept in the current state (without a frame tag).
    public var maxPayload: UInt32 { WireLimits.maxRequestPayload }

    /// True until HELLO: the next frame needs a fresh worker nonce.
    public var needsNonce: Bool { state == .awaitingHello }

    /// A header that failed to decode.
    public mutating func received(headerError: FrameHeader.DecodeError) -> ServerAction {
        switch headerError {
        case .badMagic: return fail(0, .badRequest, "not a Shoal frame (bad magic)")
        case .unsupportedVersion(let v):
            // Written in the peer's version so that its own decoder reads the reason.
            return fail(0, .unsupportedVersion, "client speaks protocol version \(v); this worker speaks version \(FrameHeader.version): upgrade the client",
                        version: v)
        case .tooLarge(let n): return fail(0, .tooLarge, "frame payload of \(n) bytes exceeds the limit of \(maxPayload)")
        }
    }

    /// A whole frame (its tag, if any, already checked and removed); `nonce` is the worker's
    /// fresh random Nw, used if this frame is HELLO.
    public mutating func received(_ header: FrameHeader, payload: [UInt8], nonce: [UInt8]) -> ServerAction {
        let id = header.requestID
        guard let type = FrameType(rawValue: header.type) else {
            return fail(id, .badRequest, "unknown frame type \(header.type)")
        }
        switch state {
        case .closed:
            return fail(id, .badRequest, "connection is closed")
        case .awaitingHello:
            guard type == .hello, let hello = HelloMessage(decoding: payload) else {
                return fail(id, .unauthenticated, "the first frame must be a valid version \(FrameHeader.version) HELLO")
            }
            let ours = UInt16(FrameHeader.version)
            guard hello.minVersion <= ours, hello.maxVersion >= ours else {
                return fail(id, .unsupportedVersion,
                            "client speaks protocol versions \(hello.minVersion)-\(hello.maxVersion); this worker speaks version \(ours)")
            }
            guard nonce.count == MutualAuth.nonceSize else {
                return fail(id, .internal, "the worker has no fresh nonce for this connection (its random source failed)")
            }
            if hello.flags & HelloMessage.untaggedFramesFlag != 0 {
                guard allowsUntaggedFrames else {
                    return fail(id, .badRequest,
                                "the client asked for frames without tags, a benchmark switch this worker does not allow (allowUntaggedFrames)")
                }
                framesTagged = false
            }
            clientName = hello.clientName
            let proof = MutualAuth.workerProof(secret: secret, hello: payload, workerNonce: nonce)
            let challenge = ChallengeMessage(version: ours, nonce: nonce, proof: proof)
            state = .awaitingAuth(hello: payload, challenge: challenge)
            let out = challenge.encoded
            return .send(FrameHeader(type: .challenge, requestID: id, payloadLength: UInt32(out.count)), out)
        case .awaitingAuth(let hello, let challenge):
            guard type == .auth, payload.count == MutualAuth.proofSize else {
                return fail(id, .unauthenticated, "expected AUTH with a \(MutualAuth.proofSize)-byte proof after the challenge")
            }
            let expected = MutualAuth.clientProof(secret: secret, hello: hello, challenge: challenge.signedPart)
            guard constantTimeEqual(expected, payload) else {
                return fail(id, .unauthenticated, "authentication failed: the client's secret does not match the worker's")
            }
            guard let clientNonce = HelloMessage(decoding: hello)?.nonce else { return fail(id, .internal, "lost the HELLO") }
            sessionKeys = MutualAuth.sessionKeys(secret: secret, clientNonce: clientNonce, workerNonce: challenge.nonce)
            state = .ready
            var out: [UInt8] = []
            out.appendLE(blockSize)
            return .send(FrameHeader(type: .authOK, requestID: id, payloadLength: UInt32(out.count)), out)
        case .ready:
            switch type {
            case .stat:
                guard let req = StatRequest(decoding: payload) else { return fail(id, .badRequest, "malformed STAT frame") }
                return .serve(requestID: id, .stat(req))
            case .read:
                guard let req = ReadRequest(decoding: payload) else { return fail(id, .badRequest, "malformed READ frame") }
                return .serve(requestID: id, .read(req))
            default:
                return fail(id, .badRequest, "frame type \(header.type) is not a request")
            }
        }
    }

    /// A frame whose tag did not verify: close, saying why.
    public mutating func receivedForgedFrame(_ header: FrameHeader) -> ServerAction {
        fail(header.requestID, .unauthenticated,
             "frame \(header.requestID) failed authentication (tampered, replayed or corrupted in transit); closing the connection")
    }

    /// The worker could not go on with this connection (its random source failed, say).
    public mutating func internalFailure(_ message: String) -> ServerAction { fail(0, .internal, message) }

    private mutating func fail(_ id: UInt32, _ code: StatusCode, _ message: String, version: UInt8 = FrameHeader.version) -> ServerAction {
        state = .closed
        let bytes = Array(message.utf8.prefix(WireLimits.maxMessage))
        var header = FrameHeader(type: .error, status: code, requestID: id, payloadLength: UInt32(bytes.count))
        header.version = version
        return .fail(header, bytes)
    }
}
