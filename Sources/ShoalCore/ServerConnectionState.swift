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

/// The server side of one connection: HELLO → CHALLENGE → AUTH → requests. Anything else, in
/// any state, is answered with an ERROR frame and the connection is closed.
public struct ServerConnectionState: Sendable {
    public enum State: Sendable, Equatable {
        case awaitingHello
        case awaitingAuth(nonce: [UInt8])
        case ready
        case closed
    }

    public private(set) var state: State = .awaitingHello
    public private(set) var clientName = ""
    private let secret: [UInt8]
    private let blockSize: UInt32

    /// `secret` empty means authentication is off (only for tests that say so).
    public init(secret: [UInt8], blockSize: UInt32) {
        self.secret = secret
        self.blockSize = blockSize
    }

    /// The largest payload to accept in the current state.
    public var maxPayload: UInt32 { WireLimits.maxRequestPayload }

    /// A header that failed to decode.
    public mutating func received(headerError: FrameHeader.DecodeError) -> ServerAction {
        switch headerError {
        case .badMagic: return fail(0, .badRequest, "not a Shoal frame (bad magic)")
        case .unsupportedVersion(let v): return fail(0, .unsupportedVersion, "protocol version \(v) is not supported (this worker speaks 1)")
        case .tooLarge(let n): return fail(0, .tooLarge, "frame payload of \(n) bytes exceeds the limit of \(WireLimits.maxRequestPayload)")
        }
    }

    /// A whole frame; `nonce` is fresh randomness used if this frame is HELLO.
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
                return fail(id, .unauthenticated, "the first frame must be a valid HELLO")
            }
            guard hello.minVersion <= 1, hello.maxVersion >= 1 else {
                return fail(id, .unsupportedVersion, "client speaks versions \(hello.minVersion)-\(hello.maxVersion); this worker speaks 1")
            }
            clientName = hello.clientName
            state = .awaitingAuth(nonce: nonce)
            var out: [UInt8] = []
            out.appendLE(UInt16(1))
            out += nonce
            return .send(FrameHeader(type: .challenge, requestID: id, payloadLength: UInt32(out.count)), out)
        case .awaitingAuth(let expectedNonce):
            guard type == .auth, payload.count == 32 else {
                return fail(id, .unauthenticated, "expected AUTH with a 32-byte HMAC after the challenge")
            }
            if !secret.isEmpty {
                let expected = ChallengeAuth.response(secret: secret, nonce: expectedNonce)
                guard constantTimeEqual(expected, payload) else {
                    return fail(id, .unauthenticated, "authentication failed: the client's secret does not match the worker's")
                }
            }
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

    private mutating func fail(_ id: UInt32, _ code: StatusCode, _ message: String) -> ServerAction {
        state = .closed
        let bytes = Array(message.utf8.prefix(WireLimits.maxMessage))
        return .fail(FrameHeader(type: .error, status: code, requestID: id, payloadLength: UInt32(bytes.count)), bytes)
    }
}
