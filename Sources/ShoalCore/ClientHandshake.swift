/// What the client's connection does next in the handshake; the state machine does no I/O.
public enum ClientHandshakeAction: Sendable, Equatable {
    /// Send this frame, then wait for the next.
    case send(FrameHeader, [UInt8])
    /// The worker accepted: the cluster's block size and how many requests the connection may
    /// keep in flight. Frames from here on carry tags under `ClientHandshake.sessionKeys`
    /// (unless the channel is TLS).
    case ready(AuthOKMessage)
    /// Stop and close the connection with this error.
    case fail(ShoalError)
}

/// The client side of the mutual handshake: HELLO (with Nc) → CHALLENGE (Nw and the worker's
/// proof, checked before the client proves anything) → AUTH (the client's proof) → AUTH_OK.
/// A worker without the secret learns nothing from this client: not even a proof over its nonce.
public struct ClientHandshake: Sendable {
    public enum State: Sendable, Equatable {
        case start
        case awaitingChallenge
        case awaitingAuthOK
        case ready
        case failed
    }

    public private(set) var state: State = .start
    /// The session's keys, once the worker has proved itself.
    public private(set) var sessionKeys: SessionKeys?
    private let secret: [UInt8]
    private let hello: [UInt8]
    private let clientNonce: [UInt8]
    /// Names the worker in error messages.
    private let worker: String

    /// `nonce` is Nc: fresh bytes from the system's random source. `untaggedFrames` asks for
    /// frames without tags (benchmarks only; the worker must allow it).
    public init(secret: [UInt8], nonce: [UInt8], clientName: String, worker: String, untaggedFrames: Bool = false) {
        self.secret = secret
        self.clientNonce = nonce
        self.worker = worker
        hello = HelloMessage(nonce: nonce, flags: untaggedFrames ? HelloMessage.untaggedFramesFlag : 0, clientName: clientName).encoded
    }

    /// The HELLO frame that opens the connection.
    public mutating func start() -> ClientHandshakeAction {
        guard state == .start, clientNonce.count == MutualAuth.nonceSize else {
            return fail(.internal, "no fresh client nonce for worker \(worker)")
        }
        state = .awaitingChallenge
        return .send(FrameHeader(type: .hello, requestID: 0, payloadLength: UInt32(hello.count)), hello)
    }

    /// A whole frame from the worker (AUTH_OK's tag already checked and removed).
    public mutating func received(_ header: FrameHeader, payload: [UInt8]) -> ClientHandshakeAction {
        if header.status != StatusCode.ok.rawValue || header.type == FrameType.error.rawValue {
            let code = StatusCode(rawValue: header.status) ?? .internal
            return fail(code == .ok ? .badRequest : code, "worker \(worker) refused the handshake: \(String(decoding: payload.prefix(WireLimits.maxMessage), as: UTF8.self))")
        }
        switch state {
        case .awaitingChallenge:
            guard header.type == FrameType.challenge.rawValue, let challenge = ChallengeMessage(decoding: payload) else {
                return fail(.badRequest, "worker \(worker) sent frame type \(header.type) (\(payload.count) bytes) where a version \(FrameHeader.version) CHALLENGE was expected")
            }
            guard challenge.version == UInt16(FrameHeader.version) else {
                return fail(.unsupportedVersion, "worker \(worker) chose protocol version \(challenge.version); this client speaks version \(FrameHeader.version)")
            }
            let expected = MutualAuth.workerProof(secret: secret, hello: hello, workerNonce: challenge.nonce)
            guard constantTimeEqual(expected, challenge.proof) else {
                return fail(.unauthenticated, "worker \(worker) does not hold the cluster secret (its proof does not match ours); check that it and this client use the same secret, and that nothing sits between them")
            }
            sessionKeys = MutualAuth.sessionKeys(secret: secret, clientNonce: clientNonce, workerNonce: challenge.nonce)
            state = .awaitingAuthOK
            let proof = MutualAuth.clientProof(secret: secret, hello: hello, challenge: challenge.signedPart)
            return .send(FrameHeader(type: .auth, requestID: 0, payloadLength: UInt32(proof.count)), proof)
        case .awaitingAuthOK:
            guard header.type == FrameType.authOK.rawValue, let ok = AuthOKMessage(decoding: payload) else {
                return fail(.badRequest, "worker \(worker) sent frame type \(header.type) where AUTH_OK was expected")
            }
            state = .ready
            return .ready(ok)
        case .start, .ready, .failed:
            return fail(.badRequest, "worker \(worker) sent frame type \(header.type) outside the handshake")
        }
    }

    private mutating func fail(_ code: StatusCode, _ message: String) -> ClientHandshakeAction {
        state = .failed
        sessionKeys = nil
        return .fail(ShoalError(code, message))
    }
}
