import Logging
import ShoalCore
import ShoalSys

/// Drives one client connection: frames in, the handshake state machine, requests to the block
/// service, replies out. A protocol error gets an ERROR frame and closes this connection only.
struct ConnectionHandler {
    let service: BlockService
    let secret: [UInt8]
    let logger: Logger
    /// A client must finish its handshake, and send each frame's payload, within this time.
    let frameTimeoutNanos: UInt64 = 10_000_000_000
    /// Unauthenticated clients choose how many protocol errors happen (a fuzzer made thousands):
    /// a few lines per interval, the next one saying how many were left out.
    let protocolErrorLog = SharedLogRateLimiter(limit: 5, intervalNanos: 10_000_000_000)

    func serve(_ socket: TCPSocket) {
        service.metrics.connections.increment()
        defer { service.metrics.connections.decrement() }
        var state = ServerConnectionState(secret: secret, blockSize: service.blockSize)
        var headerBytes = [UInt8](repeating: 0, count: FrameHeader.size)
        while state.state != .closed {
            // Idle authenticated clients may wait as long as they like; others get a deadline.
            let headerDeadline: UInt64? = state.state == .ready ? nil : monotonicNanos() + frameTimeoutNanos
            do {
                try headerBytes.withUnsafeMutableBytes { try socket.receive(into: $0.baseAddress!, count: FrameHeader.size, deadline: headerDeadline) }
            } catch {
                return  // closed by the peer or by shutdown
            }
            let decoded = headerBytes.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxPayload: state.maxPayload) }
            let action: ServerAction
            switch decoded {
            case .failure(let e):
                action = state.received(headerError: e)
            case .success(let header):
                guard let payload = try? socket.receive(count: Int(header.payloadLength), deadline: monotonicNanos() + frameTimeoutNanos) else { return }
                let nonce = state.state == .awaitingHello ? secureRandomBytes(ChallengeAuth.nonceSize) : []
                action = state.received(header, payload: payload, nonce: nonce)
            }
            switch action {
            case .send(let h, let body):
                guard (try? socket.send(h.bytes + body, deadline: monotonicNanos() + frameTimeoutNanos)) != nil else { return }
            case .fail(let h, let body):
                service.metrics.error(StatusCode(rawValue: h.status) ?? .badRequest)
                let (log, suppressed) = protocolErrorLog.admit()
                if log {
                    var metadata: Logger.Metadata = ["error": "\(String(decoding: body, as: UTF8.self))"]
                    if suppressed > 0 { metadata["suppressed"] = "\(suppressed) more since the last such line" }
                    logger.info("closing a connection after a protocol error", metadata: metadata)
                }
                _ = try? socket.send(h.bytes + body, deadline: monotonicNanos() + 1_000_000_000)
                return
            case .serve(let id, let request):
                guard handle(request, id: id, socket: socket) else { return }
            }
        }
    }

    /// Serves one request; false if the connection broke while answering.
    private func handle(_ request: WorkerRequest, id: UInt32, socket: TCPSocket) -> Bool {
        switch request {
        case .stat(let req):
            do {
                let body = try service.stat(req).encoded
                return send(socket, FrameHeader(type: .statReply, requestID: id, payloadLength: UInt32(body.count)), body)
            } catch {
                return sendError(socket, type: .statReply, id: id, error)
            }
        case .read(let req):
            let block: ServedBlock
            do { block = try service.read(req) } catch {
                return sendError(socket, type: .readReply, id: id, error)
            }
            // After the reply: a fetched block is written to the cache, and the buffer goes back.
            defer { service.complete(block) }
            if service.answerWithoutData {
                var body: [UInt8] = []
                body.appendLE(block.crc)
                body.appendLE(UInt32(block.length))
                return send(socket, FrameHeader(type: .readNoData, requestID: id, payloadLength: 8), body)
            }
            var header = [UInt8](repeating: 0, count: FrameHeader.size + 4)
            header.withUnsafeMutableBytes { p in
                FrameHeader(type: .readReply, requestID: id, payloadLength: UInt32(block.length + 4)).encode(into: p.baseAddress!)
                p.storeBytes(of: block.crc.littleEndian, toByteOffset: FrameHeader.size, as: UInt32.self)
            }
            // The data goes out from the registered buffer the disk (or the store) wrote it to.
            let sent: Bool = header.withUnsafeBytes { h in
                (try? socket.send([h, UnsafeRawBufferPointer(start: block.slot.base + block.dataOffset, count: block.length)],
                                  deadline: monotonicNanos() + 60_000_000_000)) != nil
            }
            if sent { service.metrics.bytesServed.increment(by: Int64(block.length)) }
            return sent
        }
    }

    private func send(_ socket: TCPSocket, _ h: FrameHeader, _ body: [UInt8]) -> Bool {
        (try? socket.send(h.bytes + body, deadline: monotonicNanos() + frameTimeoutNanos)) != nil
    }

    private func sendError(_ socket: TCPSocket, type: FrameType, id: UInt32, _ error: ShoalError) -> Bool {
        service.metrics.error(error.code)
        let body = Array(error.message.utf8.prefix(WireLimits.maxMessage))
        return send(socket, FrameHeader(type: type, status: error.code, requestID: id, payloadLength: UInt32(body.count)), body)
    }
}
