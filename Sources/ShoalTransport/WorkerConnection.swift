import ShoalCore
import ShoalSys

/// The client side of one TCP connection to a worker: handshake, then STAT and pipelined READs.
/// Blocking I/O with deadlines; no threads of its own.
public final class WorkerConnection: @unchecked Sendable {
    public let endpoint: Endpoint
    public let socket: TCPSocket
    public let blockSize: UInt32
    private var nextRequestID: UInt32 = 1
    public let timeoutNanos: UInt64
    /// Benchmarks only: take READ_NODATA replies (a worker with `answerWithoutData`) as answered,
    /// leaving the buffer as it was. Otherwise such a reply is an error naming the switch.
    public var acceptsNoData = false

    /// Connects and authenticates with `secret`.
    public init(endpoint: Endpoint, secret: [UInt8], clientName: String = "shoal-client", timeoutMillis: Int32 = 10_000) throws(ShoalError) {
        self.endpoint = endpoint
        self.timeoutNanos = UInt64(timeoutMillis) * 1_000_000
        let socket: TCPSocket
        do {
            socket = try TCPSocket.connect(endpoint, timeoutMillis: timeoutMillis)
        } catch {
            throw ShoalError(.connectionFailed, "cannot connect to worker \(endpoint): \(error)")
        }
        socket.setBufferSizes(8 << 20)
        let deadline = monotonicNanos() + timeoutNanos
        let hello = HelloMessage(clientName: clientName).encoded
        try WorkerConnection.io(endpoint) { try socket.send(FrameHeader(type: .hello, requestID: 0, payloadLength: UInt32(hello.count)).bytes + hello, deadline: deadline) }
        let (h1, challenge) = try WorkerConnection.receiveSmall(socket, endpoint, deadline: deadline)
        guard h1.type == FrameType.challenge.rawValue, challenge.count == 2 + ChallengeAuth.nonceSize else {
            throw WorkerConnection.unexpected(h1, challenge, endpoint, "CHALLENGE")
        }
        let mac = ChallengeAuth.response(secret: secret, nonce: Array(challenge[2...]))
        try WorkerConnection.io(endpoint) { try socket.send(FrameHeader(type: .auth, requestID: 0, payloadLength: 32).bytes + mac, deadline: deadline) }
        let (h2, ok) = try WorkerConnection.receiveSmall(socket, endpoint, deadline: deadline)
        guard h2.type == FrameType.authOK.rawValue, ok.count == 4 else { throw WorkerConnection.unexpected(h2, ok, endpoint, "AUTH_OK") }
        var r = ByteReader(ok)
        self.socket = socket
        blockSize = r.u32() ?? 0
    }

    public func close() { socket.close() }

    static func io<T>(_ endpoint: Endpoint, _ body: () throws -> T) throws(ShoalError) -> T {
        do { return try body() } catch let e as SysError {
            if e.errno == 110 /* ETIMEDOUT */ { throw ShoalError(.timeout, "worker \(endpoint) did not answer in time") }
            throw ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(e)")
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.connectionFailed, "connection to worker \(endpoint) failed: \(error)")
        }
    }

    static func receiveSmall(_ socket: TCPSocket, _ endpoint: Endpoint, deadline: UInt64) throws(ShoalError) -> (FrameHeader, [UInt8]) {
        try io(endpoint) {
            let raw = try socket.receive(count: FrameHeader.size, deadline: deadline)
            let header = try raw.withUnsafeBytes { p -> FrameHeader in
                switch FrameHeader.decode(p.baseAddress!, maxPayload: 64 * 1024) {
                case .success(let h): return h
                case .failure(let e): throw ShoalError(.badRequest, "worker \(endpoint) sent a bad frame: \(e)")
                }
            }
            return (header, try socket.receive(count: Int(header.payloadLength), deadline: deadline))
        }
    }

    static func unexpected(_ h: FrameHeader, _ payload: [UInt8], _ endpoint: Endpoint, _ wanted: String) -> ShoalError {
        if h.status != 0 {
            let code = StatusCode(rawValue: h.status) ?? .internal
            return ShoalError(code, "worker \(endpoint): \(String(decoding: payload, as: UTF8.self))")
        }
        return ShoalError(.badRequest, "worker \(endpoint) sent frame type \(h.type) where \(wanted) was expected")
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
        try WorkerConnection.io(endpoint) { try socket.send(FrameHeader(type: .stat, requestID: id, payloadLength: UInt32(payload.count)).bytes + payload, deadline: deadline) }
        let (h, body) = try WorkerConnection.receiveSmall(socket, endpoint, deadline: deadline)
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
        let deadline = monotonicNanos() + timeoutNanos
        try WorkerConnection.io(endpoint) { try socket.send(FrameHeader(type: .read, requestID: id, payloadLength: UInt32(payload.count)).bytes + payload, deadline: deadline) }
        return id
    }

    /// Receives the answer to READ `id` straight into `buffer` (exactly `length` bytes) and checks
    /// its CRC32C. On an error status the worker's message is thrown; the connection stays usable.
    public func receiveRead(id: UInt32, into buffer: UnsafeMutableRawPointer, length: Int) throws(ShoalError) {
        let deadline = monotonicNanos() + timeoutNanos * 3
        let header: FrameHeader = try WorkerConnection.io(endpoint) {
            let raw = try socket.receive(count: FrameHeader.size, deadline: deadline)
            return try raw.withUnsafeBytes { p -> FrameHeader in
                switch FrameHeader.decode(p.baseAddress!, maxPayload: WireLimits.maxResponsePayload) {
                case .success(let h): return h
                case .failure(let e): throw ShoalError(.badRequest, "worker \(endpoint) sent a bad frame: \(e)")
                }
            }
        }
        guard header.requestID == id else {
            throw ShoalError(.badRequest, "worker \(endpoint) answered request \(header.requestID), expected \(id)")
        }
        if header.status == 0 && header.type == FrameType.readNoData.rawValue && header.payloadLength == 8 {
            let body = try WorkerConnection.io(endpoint) { try socket.receive(count: 8, deadline: deadline) }
            guard acceptsNoData else {
                throw ShoalError(.badRequest, "worker \(endpoint) runs with answerWithoutData, a benchmark switch, and sent no data")
            }
            let n = body.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) }
            guard Int(n) == length else { throw ShoalError(.badRequest, "worker \(endpoint) answered for \(n) bytes where \(length) were asked") }
            return
        }
        if header.status != 0 || header.type != FrameType.readReply.rawValue {
            guard header.payloadLength <= UInt32(WireLimits.maxMessage) * 4 else {
                throw ShoalError(.connectionFailed, "worker \(endpoint) sent a \(header.payloadLength)-byte error frame")
            }
            let body = try WorkerConnection.io(endpoint) { try socket.receive(count: Int(header.payloadLength), deadline: deadline) }
            throw WorkerConnection.unexpected(header, body, endpoint, "READ_REPLY")
        }
        guard Int(header.payloadLength) == length + 4 else {
            throw ShoalError(.badRequest, "worker \(endpoint) sent \(Int(header.payloadLength) - 4) bytes where \(length) were asked")
        }
        let crc: UInt32 = try WorkerConnection.io(endpoint) {
            var c: UInt32 = 0
            try withUnsafeMutableBytes(of: &c) { try socket.receive(into: $0.baseAddress!, count: 4, deadline: deadline) }
            if length > 0 { try socket.receive(into: buffer, count: length, deadline: deadline) }
            return UInt32(littleEndian: c)
        }
        let actual = CRC32C.checksum(UnsafeRawBufferPointer(start: buffer, count: length))
        guard actual == crc else {
            throw ShoalError(.checksumMismatch, "data from worker \(endpoint) failed its CRC32C check (sent \(crc), got \(actual))")
        }
    }
}
