#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys

/// The client side of one TCP connection to a worker: the mutual handshake (the worker proves
/// it holds the secret before this side proves anything), then STAT and pipelined READs. Every
/// frame after the handshake carries a tag under the session key (or the channel is TLS), so a
/// relay can neither change a reply nor add a request. Blocking I/O with deadlines; no threads.
public final class WorkerConnection: @unchecked Sendable {
    public let endpoint: Endpoint
    public let socket: TCPSocket
    public let blockSize: UInt32
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

    /// Connects (through TLS when `tls` is given) and runs the mutual handshake with `secret`.
    /// `untaggedFrames` asks a worker running with the benchmark switch `allowUntaggedFrames` for
    /// frames without tags, to measure what the tags cost; never for service.
    public init(endpoint: Endpoint, secret: [UInt8], clientName: String = "shoal-client", timeoutMillis: Int32 = 10_000,
                tls: TLSContext? = nil, untaggedFrames: Bool = false) throws(ShoalError) {
        self.endpoint = endpoint
        self.timeoutNanos = UInt64(timeoutMillis) * 1_000_000
        let nonce: [UInt8]
        do { nonce = try secureRandomBytes(MutualAuth.nonceSize) } catch {
            throw ShoalError(.internal, "cannot open a connection to worker \(endpoint): \(error)")
        }
        let socket: TCPSocket
        do {
            socket = try TCPSocket.connect(endpoint, timeoutMillis: timeoutMillis)
        } catch {
            throw ShoalError(.connectionFailed, "cannot connect to worker \(endpoint): \(error)")
        }
        socket.setBufferSizes(8 << 20)
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
        var blockSize: UInt32 = 0
        while true {
            switch action {
            case .send(let h, let body):
                try WorkerConnection.io(endpoint) { try socket.send(h.bytes + body, deadline: deadline) }
                if h.type == FrameType.auth.rawValue, !socket.isTLS, !untaggedFrames, let keys = handshake.sessionKeys {
                    do { authenticator = try FrameAuthenticator(keys: keys, role: .client) } catch {
                        throw ShoalError(.internal, "cannot set up frame tags for worker \(endpoint): \(error)")
                    }
                }
            case .ready(let size):
                blockSize = size
            case .fail(let error):
                throw error
            }
            if case .ready = action { break }
            // AUTH_OK is the worker's first tagged frame: it shows the worker derived the same keys.
            let (h, body) = try WorkerConnection.receiveFrame(socket, endpoint, authenticator: authenticator,
                                                              maxPayload: 64 * 1024, deadline: deadline, allowUntaggedRefusal: true)
            action = handshake.received(h, payload: body)
        }
        self.socket = socket
        self.authenticator = authenticator
        self.blockSize = blockSize
    }

    public func close() { socket.close() }

    static func io<T>(_ endpoint: Endpoint, _ body: () throws -> T) throws(ShoalError) -> T {
        do { return try body() } catch let e as SysError {
            if e.errno == ETIMEDOUT { throw ShoalError(.timeout, "worker \(endpoint) did not answer in time") }
            throw ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(e)")
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(error)")
        }
    }

    static func decodeHeader(_ raw: [UInt8], _ endpoint: Endpoint, maxPayload: UInt32) throws(ShoalError) -> FrameHeader {
        switch raw.withUnsafeBytes({ FrameHeader.decode($0.baseAddress!, maxPayload: maxPayload) }) {
        case .success(let h): return h
        case .failure(.unsupportedVersion(let v)):
            throw ShoalError(.unsupportedVersion, "worker \(endpoint) speaks protocol version \(v); this client speaks version \(FrameHeader.version): run the same Shoal release on both")
        case .failure(let e):
            throw ShoalError(.badRequest, "worker \(endpoint) sent a bad frame: \(e)")
        }
    }

    static func tampered(_ endpoint: Endpoint) -> ShoalError {
        ShoalError(.tampered, "reply from worker \(endpoint) failed authentication (tampered or corrupted in transit); its bytes were discarded and the connection closed")
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

    /// Sends one frame, tagged when the session has frame tags.
    private func sendFrame(type: FrameType, id: UInt32, _ payload: [UInt8], deadline: UInt64) throws(ShoalError) {
        var bytes = FrameHeader(type: type, requestID: id, payloadLength: UInt32(payload.count + tagSize)).bytes + payload
        if let authenticator {
            do { bytes += try authenticator.seal(bytes) } catch { throw ShoalError(.internal, "cannot tag a frame for worker \(endpoint): \(error)") }
        }
        try WorkerConnection.io(endpoint) { try socket.send(bytes, deadline: deadline) }
    }

    static func unexpected(_ h: FrameHeader, _ payload: [UInt8], _ endpoint: Endpoint, _ wanted: String) -> ShoalError {
        if h.status != 0 {
            let code = StatusCode(rawValue: h.status) ?? .internal
            return ShoalError(code, "worker \(endpoint): \(String(decoding: payload, as: UTF8.self))")
        }
        return ShoalError(.badRequest, "worker \(endpoint) sent frame type \(h.type) where \(wanted) was expected")
    }

    /// Runs `body`, marking the connection broken when it throws a tag failure; an ERROR frame
    /// (the worker closing the connection) is thrown as the worker's message.
    private func received(_ wanted: String, _ body: @autoclosure () throws(ShoalError) -> (FrameHeader, [UInt8])) throws(ShoalError) -> (FrameHeader, [UInt8]) {
        do throws(ShoalError) {
            let (h, payload) = try body()
            if h.type == FrameType.error.rawValue {
                isBroken = true
                socket.close()
                throw WorkerConnection.unexpected(h, payload, endpoint, wanted)
            }
            return (h, payload)
        } catch {
            if error.code == .tampered || error.code == .connectionFailed { isBroken = true }
            throw error
        }
    }

    private func takeID() -> UInt32 {
        defer { nextRequestID &+= 1 }
        return nextRequestID
    }

    /// STAT: the object's current size and etag as the worker sees it.
    public func stat(_ object: ObjectRef, revalidate: Bool = false) throws(ShoalError) -> StatReply {
        let deadline = monotonicNanos() + timeoutNanos
        let payload = StatRequest(object: object, revalidate: revalidate).encoded
        let id = takeID()
        try sendFrame(type: .stat, id: id, payload, deadline: deadline)
        let (h, body) = try received("a reply", WorkerConnection.receiveFrame(socket, endpoint, authenticator: authenticator, maxPayload: 64 * 1024,
                                                                   deadline: deadline))
        guard h.requestID == id else { throw ShoalError(.badRequest, "worker \(endpoint) answered request \(h.requestID), expected \(id)") }
        guard h.type == FrameType.statReply.rawValue, h.status == 0, let reply = StatReply(decoding: body) else {
            throw WorkerConnection.unexpected(h, body, endpoint, "STAT_REPLY")
        }
        return reply
    }

    /// Sends a READ without waiting (pipelining); returns its request id.
    public func sendRead(_ request: ReadRequest) throws(ShoalError) -> UInt32 {
        let payload = request.encoded
        let id = takeID()
        try sendFrame(type: .read, id: id, payload, deadline: monotonicNanos() + timeoutNanos)
        return id
    }

    /// Receives the answer to READ `id` straight into `buffer` (exactly `length` bytes) and checks
    /// its tag and its CRC32C. On an error status the worker's message is thrown; the connection
    /// stays usable. A reply that fails its tag is never returned: the buffer's range is zeroed,
    /// the connection closed, and a `tampered` error thrown.
    public func receiveRead(id: UInt32, into buffer: UnsafeMutableRawPointer, length: Int) throws(ShoalError) {
        let deadline = monotonicNanos() + timeoutNanos * 3
        var raw = [UInt8](repeating: 0, count: FrameHeader.size + 4)
        try WorkerConnection.io(endpoint) {
            try raw.withUnsafeMutableBytes { try socket.receive(into: $0.baseAddress!, count: FrameHeader.size, deadline: deadline) }
        }
        let header = try WorkerConnection.decodeHeader(raw, endpoint, maxPayload: WireLimits.maxResponsePayload + UInt32(tagSize))
        let isData = header.status == 0 && header.type == FrameType.readReply.rawValue
        guard !isData else { return try receiveData(header, raw, id: id, into: buffer, length: length, deadline: deadline) }
        // Anything else is small: take it whole, check its tag, then look at it.
        guard header.payloadLength <= UInt32(WireLimits.maxMessage) * 4 + UInt32(tagSize) else {
            throw ShoalError(.connectionFailed, "worker \(endpoint) sent a \(header.payloadLength)-byte frame of type \(header.type) where a READ reply was expected")
        }
        let bytes = try WorkerConnection.io(endpoint) { try socket.receive(count: Int(header.payloadLength), deadline: deadline) }
        let (h, payload) = try received("READ_REPLY", WorkerConnection.opened(header, raw: raw, payload: bytes, socket, endpoint,
                                                                              authenticator: authenticator))
        guard h.requestID == id else {
            throw ShoalError(.badRequest, "worker \(endpoint) answered request \(h.requestID), expected \(id)")
        }
        if h.status == 0 && h.type == FrameType.readNoData.rawValue && payload.count == 8 {
            guard acceptsNoData else {
                throw ShoalError(.badRequest, "worker \(endpoint) runs with answerWithoutData, a benchmark switch, and sent no data")
            }
            let n = payload.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) }
            guard Int(n) == length else { throw ShoalError(.badRequest, "worker \(endpoint) answered for \(n) bytes where \(length) were asked") }
            return
        }
        throw WorkerConnection.unexpected(h, payload, endpoint, "READ_REPLY")
    }

    /// A READ_REPLY: CRC, data straight into the caller's buffer, then (with tags) the tag, which
    /// is checked over the header, the CRC and the data before the data counts as received.
    private func receiveData(_ header: FrameHeader, _ raw: [UInt8], id: UInt32, into buffer: UnsafeMutableRawPointer, length: Int,
                             deadline: UInt64) throws(ShoalError) {
        guard Int(header.payloadLength) == length + 4 + tagSize else {
            throw ShoalError(.connectionFailed, "worker \(endpoint) sent \(Int(header.payloadLength) - 4 - tagSize) bytes where \(length) were asked")
        }
        var raw = raw
        var tag = [UInt8](repeating: 0, count: FrameTag.size)
        let data = UnsafeRawBufferPointer(start: buffer, count: length)
        try WorkerConnection.io(endpoint) {
            try raw.withUnsafeMutableBytes { try socket.receive(into: $0.baseAddress! + FrameHeader.size, count: 4, deadline: deadline) }
            if length > 0 { try socket.receive(into: buffer, count: length, deadline: deadline) }
            if tagSize > 0 { try tag.withUnsafeMutableBytes { try socket.receive(into: $0.baseAddress!, count: FrameTag.size, deadline: deadline) } }
        }
        if let authenticator {
            let ok = raw.withUnsafeBytes { r in tag.withUnsafeBytes { t in authenticator.open([r, data], tag: t) } }
            guard ok else {
                memset(buffer, 0, length)
                isBroken = true
                socket.close()
                throw WorkerConnection.tampered(endpoint)
            }
        }
        guard header.requestID == id else {
            throw ShoalError(.connectionFailed, "worker \(endpoint) answered request \(header.requestID), expected \(id)")
        }
        let crc = raw.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: FrameHeader.size, as: UInt32.self)) }
        let actual = CRC32C.checksum(data)
        guard actual == crc else {
            throw ShoalError(.checksumMismatch, "data from worker \(endpoint) failed its CRC32C check (sent \(crc), got \(actual))")
        }
    }
}
