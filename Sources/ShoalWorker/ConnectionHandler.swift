import Logging
import ShoalCore
import ShoalSys

/// Drives one client connection: TLS if configured, frames in, the handshake state machine,
/// frame tags, requests to the block service, replies out. A protocol error or a frame that fails
/// its tag gets an ERROR frame and closes this connection only.
struct ConnectionHandler {
    let service: BlockService
    let secret: [UInt8]
    let tls: TLSContext?
    /// The benchmark switch `allowUntaggedFrames`.
    let allowsUntaggedFrames: Bool
    let logger: Logger
    /// Says once, at the first TLS connection, whether kernel TLS took effect.
    let tlsReport: TLSReport
    /// A client must finish its whole handshake (TLS, if any, and the Shoal one) within this time
    /// of connecting, and send each later frame's payload within it.
    let frameTimeoutNanos: UInt64 = 10_000_000_000
    /// Unauthenticated clients choose how many protocol errors happen (a fuzzer made thousands):
    /// a few lines per interval, the next one saying how many were left out.
    let protocolErrorLog = SharedLogRateLimiter(limit: 5, intervalNanos: 10_000_000_000)

    /// `established` is called once the client has proved it holds the secret: from then on the
    /// connection keeps its place when the worker is full (see TCPServer).
    func serve(_ socket: TCPSocket, established: @Sendable () -> Void = {}) {
        service.metrics.connections.increment()
        defer { service.metrics.connections.decrement() }
        // One deadline for the whole handshake: per frame, a client that sent each piece just in
        // time kept an unauthenticated connection open for a minute.
        let handshakeDeadline = monotonicNanos() + frameTimeoutNanos
        if let tls {
            // A client without TLS opens with a Shoal frame: tell it, in a frame it can read. Its
            // first byte decides ('S' of the magic; a TLS record starts with 0x16): peeking for more
            // polled every millisecond while a client held the rest back, and a few hundred
            // connections that sent one byte each kept the worker's cores busy.
            if let first = try? socket.peekByte(deadline: handshakeDeadline), first == FrameHeader.firstByte {
                let message = Array("this worker requires TLS: give the client the cluster's CA file (tlsCAFile, --tls-ca or SHOAL_TLS_CA_FILE)".utf8)
                let h = FrameHeader(type: .error, status: .unauthenticated, requestID: 0, payloadLength: UInt32(message.count))
                service.metrics.error(.unauthenticated)
                logClosing("closing a connection without TLS to a TLS worker")
                _ = try? socket.send(h.bytes + message, deadline: monotonicNanos() + 1_000_000_000)
                return
            }
            do { try socket.startTLS(tls, host: nil, deadline: handshakeDeadline) } catch {
                service.metrics.error(.unauthenticated)
                logClosing("closing a connection whose TLS handshake failed", ["error": "\(error)"])
                return
            }
            tlsReport.first(kernelSend: socket.kernelTLSSend, logger)
        }
        var connection = Connection(socket: socket)
        var state = ServerConnectionState(secret: secret, blockSize: service.blockSize, allowsUntaggedFrames: allowsUntaggedFrames)
        var headerBytes = [UInt8](repeating: 0, count: FrameHeader.size)
        while state.state != .closed {
            // Idle authenticated clients may wait as long as they like; others get a deadline.
            let ready = state.state == .ready
            let headerDeadline: UInt64? = ready ? nil : handshakeDeadline
            do {
                try headerBytes.withUnsafeMutableBytes { try socket.receive(into: $0.baseAddress!, count: FrameHeader.size, deadline: headerDeadline) }
            } catch {
                return  // closed by the peer or by shutdown
            }
            let tagSize = UInt32(connection.tagSize)
            let decoded = headerBytes.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxPayload: state.maxPayload + tagSize) }
            var action: ServerAction
            switch decoded {
            case .failure(let e):
                action = state.received(headerError: e)
            case .success(var header):
                let payloadDeadline = ready ? monotonicNanos() + frameTimeoutNanos : handshakeDeadline
                guard var payload = try? socket.receive(count: Int(header.payloadLength), deadline: payloadDeadline) else { return }
                if let auth = connection.authenticator {
                    guard auth.open(header: headerBytes, payload: payload) else {
                        action = state.receivedForgedFrame(header)
                        break
                    }
                    payload.removeLast(FrameTag.size)
                    header.payloadLength -= tagSize
                }
                var nonce: [UInt8] = []
                if state.needsNonce {
                    do { nonce = try secureRandomBytes(MutualAuth.nonceSize) } catch {
                        logger.error("refusing a connection: the worker cannot authenticate clients without a random source", metadata: ["error": "\(error)"])
                        action = state.internalFailure("the worker's random source failed; it cannot authenticate connections (see its log)")
                        break
                    }
                }
                action = state.received(header, payload: payload, nonce: nonce)
            }
            // From AUTH_OK on, every frame is tagged (unless TLS already authenticates them).
            if connection.authenticator == nil, !socket.isTLS, state.framesTagged, let keys = state.sessionKeys {
                do { connection.authenticator = try FrameAuthenticator(keys: keys, role: .worker) } catch {
                    logger.error("cannot set up frame tags", metadata: ["error": "\(error)"])
                    action = state.internalFailure("the worker cannot tag frames: \(error)")
                }
            }
            switch action {
            case .send(let h, let body):
                // Before AUTH_OK leaves: a client that has it may open its next connection at once.
                if h.type == FrameType.authOK.rawValue { established() }
                guard connection.send(h, body, deadline: monotonicNanos() + frameTimeoutNanos) else { return }
            case .fail(let h, let body):
                service.metrics.error(StatusCode(rawValue: h.status) ?? .badRequest)
                logClosing("closing a connection after a protocol error", ["error": "\(String(decoding: body, as: UTF8.self))"])
                _ = connection.send(h, body, deadline: monotonicNanos() + 1_000_000_000)
                return
            case .serve(let id, let request):
                guard handle(request, id: id, connection: &connection) else { return }
            }
        }
    }

    /// Logs why a connection before (or outside) authentication is closed: a few lines per
    /// interval, the next one saying how many were left out. Such clients choose how often this
    /// happens, plain clients and failed TLS handshakes included.
    private func logClosing(_ message: Logger.Message, _ metadata: Logger.Metadata = [:]) {
        protocolErrorLog.log(logger, .info, message, metadata)
    }

    /// Serves one request; false if the connection broke while answering.
    private func handle(_ request: WorkerRequest, id: UInt32, connection: inout Connection) -> Bool {
        switch request {
        case .stat(let req):
            do {
                let body = try service.stat(req).encoded
                return connection.send(FrameHeader(type: .statReply, requestID: id, payloadLength: UInt32(body.count)), body,
                                       deadline: monotonicNanos() + frameTimeoutNanos)
            } catch {
                return sendError(&connection, type: .statReply, id: id, error)
            }
        case .read(let req):
            let block: ServedBlock
            do { block = try service.read(req) } catch {
                return sendError(&connection, type: .readReply, id: id, error)
            }
            // After the reply: a fetched block is written to the cache, and the buffer goes back.
            defer { service.complete(block) }
            if service.answerWithoutData {
                var body: [UInt8] = []
                body.appendLE(block.crc)
                body.appendLE(UInt32(block.length))
                return connection.send(FrameHeader(type: .readNoData, requestID: id, payloadLength: 8), body,
                                       deadline: monotonicNanos() + frameTimeoutNanos)
            }
            // The data goes out from the registered buffer the disk (or the store) wrote it to;
            // its tag, when there is one, is computed over it there, without a copy.
            let data = UnsafeRawBufferPointer(start: block.slot.base + block.dataOffset, count: block.length)
            let sent = connection.sendRead(id: id, crc: block.crc, data: data, deadline: monotonicNanos() + 60_000_000_000)
            if sent { service.metrics.bytesServed.increment(by: Int64(block.length)) }
            return sent
        }
    }

    private func sendError(_ connection: inout Connection, type: FrameType, id: UInt32, _ error: ShoalError) -> Bool {
        service.metrics.error(error.code)
        let body = Array(error.message.utf8.prefix(WireLimits.maxMessage))
        return connection.send(FrameHeader(type: type, status: error.code, requestID: id, payloadLength: UInt32(body.count)), body,
                               deadline: monotonicNanos() + frameTimeoutNanos)
    }
}

/// One connection's socket and, once the session exists on plain TCP, its frame tags: every
/// frame sent goes through here so none leaves untagged.
struct Connection {
    let socket: TCPSocket
    var authenticator: FrameAuthenticator?

    var tagSize: Int { authenticator == nil ? 0 : FrameTag.size }

    /// Sends a small frame; `header.payloadLength` is the body's length, the tag is added here.
    func send(_ header: FrameHeader, _ body: [UInt8], deadline: UInt64) -> Bool {
        var h = header
        h.payloadLength += UInt32(tagSize)
        var bytes = h.bytes + body
        if let authenticator {
            guard let tag = try? authenticator.seal(bytes) else { return false }
            bytes += tag
        }
        return (try? socket.send(bytes, deadline: deadline)) != nil
    }

    /// Sends a READ_REPLY: header and CRC, the data from where it lies, then the tag.
    func sendRead(id: UInt32, crc: UInt32, data: UnsafeRawBufferPointer, deadline: UInt64) -> Bool {
        var head = [UInt8](repeating: 0, count: FrameHeader.size + 4)
        head.withUnsafeMutableBytes { p in
            FrameHeader(type: .readReply, requestID: id, payloadLength: UInt32(data.count + 4 + tagSize)).encode(into: p.baseAddress!)
            p.storeBytes(of: crc.littleEndian, toByteOffset: FrameHeader.size, as: UInt32.self)
        }
        var tag = [UInt8](repeating: 0, count: tagSize)
        if let authenticator {
            let sealed = head.withUnsafeBytes { h in
                tag.withUnsafeMutableBytes { t in (try? authenticator.seal([h, data], tag: t.baseAddress!)) != nil }
            }
            guard sealed else { return false }
        }
        return head.withUnsafeBytes { h in
            tag.withUnsafeBytes { t in (try? socket.send([h, data, t], deadline: deadline)) != nil }
        }
    }
}

/// Logs, once per worker, whether kernel TLS took effect on its connections.
final class TLSReport: @unchecked Sendable {
    private let lock = ConditionLock()
    private var done = false

    func first(kernelSend: Bool, _ logger: Logger) {
        guard lock.withLock({ () -> Bool in defer { done = true }; return !done }) else { return }
        if kernelSend {
            logger.notice("TLS connection: kernel TLS is sending (the kernel encrypts the replies; OpenSSL no longer does)")
        } else {
            logger.notice("TLS connection: kernel TLS is not in effect (this kernel has no TLS module, or OpenSSL lacks it): OpenSSL encrypts in user space, copying each reply")
        }
    }
}
