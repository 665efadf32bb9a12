import NIOCore
import NIOHTTP1
import NIOPosix
import ShoalCore
import ShoalSys

/// An admin HTTP answer.
public struct AdminResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: String
}

/// Bounds on the admin port, so clients that connect and send little cannot take the worker's
/// file descriptors (the data plane needs them too).
public struct AdminLimits: Sendable, Equatable {
    /// Admin connections open at once. One more takes the place of the oldest connection whose
    /// request has not arrived (closed); when every one has its request, it is closed at once.
    public var maxConnections = 64
    /// The whole request must arrive, and its answer leave, within this time of the connect.
    public var requestTimeoutSeconds: Double = 10
    /// A connection that sends nothing for this long is closed.
    public var idleTimeoutSeconds: Double = 5

    public init() {}
}

/// The admin HTTP port (/metrics, /healthz, /status, /pins) on SwiftNIO: one request per
/// connection, checked by `AdminAccess` before it is routed.
public final class AdminServer: Sendable {
    private let channel: any Channel
    public let port: Int

    /// `refused` is called for each connection closed for being over `limits.maxConnections`,
    /// `displaced` for each one closed before its request arrived, to make room for a new one.
    public init(endpoint: Endpoint, limits: AdminLimits, secret: [UInt8], hosts: [String], refused: @escaping @Sendable () -> Void = {},
                displaced: @escaping @Sendable () -> Void = {},
                route: @escaping @Sendable (String, String) -> AdminResponse) async throws {
        let open = ConnectionCount(limit: limits.maxConnections)
        let accessBox = AccessBox()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard let access = accessBox.value else { return channel.close() }
                // Connections that send nothing (no credentials needed) must not keep /healthz
                // and /metrics from everyone: the oldest one still waiting for its request goes.
                switch open.acquire(channel) {
                case .full:
                    refused()
                    return channel.close()
                case .admitted(let victim):
                    if let victim {
                        victim.close(promise: nil)
                        displaced()
                    }
                }
                channel.closeFuture.whenComplete { _ in open.release(channel) }
                let idle = TimeAmount.nanoseconds(Int64(limits.idleTimeoutSeconds * 1e9))
                let requestTimeout = TimeAmount.nanoseconds(Int64(limits.requestTimeoutSeconds * 1e9))
                return channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(IdleStateHandler(readTimeout: idle))
                    try pipeline.configureHTTPServerPipeline()
                    try pipeline.addHandler(AdminHandler(access: access, route: route, requestTimeout: requestTimeout,
                                                         requestArrived: { open.answering(channel) }))
                }
            }
        channel = try await bootstrap.bind(host: endpoint.host, port: Int(endpoint.port)).get()
        port = channel.localAddress?.port ?? Int(endpoint.port)
        // The access rules name the port actually bound (port 0 picks one).
        accessBox.value = AdminAccess(secret: secret, port: port, hosts: [endpoint.host] + hosts)
    }

    public func close() async {
        try? await channel.close()
    }
}

/// Set once after bind, before any connection can be routed.
private final class AccessBox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var stored: AdminAccess?
    var value: AdminAccess? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

/// Admin connections open now, against their limit (`ConnectionPlaces`: a connection is trusted
/// once its request has arrived; before that, a newer one may take its place).
private final class ConnectionCount: @unchecked Sendable {
    enum Admission {
        /// Taken; close `displacing` (the oldest connection still without its request), if any.
        case admitted(displacing: (any Channel)?)
        case full
    }

    private let lock = ConditionLock()
    private var places: ConnectionPlaces<ObjectIdentifier>
    private var channels: [ObjectIdentifier: any Channel] = [:]

    init(limit: Int) { places = ConnectionPlaces(limit: limit) }

    func acquire(_ channel: any Channel) -> Admission {
        lock.withLock {
            let id = ObjectIdentifier(channel)
            guard case .admitted(let victim) = places.admit(id) else { return .full }
            channels[id] = channel
            // Its place is this one's now; its close releases nothing.
            return .admitted(displacing: victim.flatMap { channels.removeValue(forKey: $0) })
        }
    }

    func answering(_ channel: any Channel) { lock.withLock { places.trust(ObjectIdentifier(channel)) } }

    func release(_ channel: any Channel) {
        lock.withLock {
            let id = ObjectIdentifier(channel)
            // A displaced channel's identifier may already name a newer one: only the holder releases.
            guard let held = channels[id], held === channel else { return }
            channels[id] = nil
            places.release(id)
        }
    }
}

private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let access: AdminAccess
    let route: @Sendable (String, String) -> AdminResponse
    let requestTimeout: TimeAmount
    let requestArrived: () -> Void
    private var deadline: Scheduled<Void>?
    private var answered = false

    init(access: AdminAccess, route: @escaping @Sendable (String, String) -> AdminResponse, requestTimeout: TimeAmount,
         requestArrived: @escaping () -> Void) {
        self.access = access
        self.route = route
        self.requestTimeout = requestTimeout
        self.requestArrived = requestArrived
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: requestTimeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil); return }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
        answered = true
        requestArrived()
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let decision = access.check(method: head.method.rawValue, path: path, host: head.headers.first(name: "host"),
                                    origin: head.headers.first(name: "origin"), authorization: head.headers.first(name: "authorization"),
                                    localAddress: context.channel.localAddress?.ipAddress)
        let answer: AdminResponse
        switch decision {
        case .allow: answer = route(head.method.rawValue, head.uri)
        case .refuse(let status, let message): answer = AdminResponse(status: status, contentType: "text/plain", body: message + "\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: answer.contentType)
        headers.add(name: "Content-Length", value: String(answer.body.utf8.count))
        headers.add(name: "Connection", value: "close")
        let responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: answer.status), headers: headers)
        context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: answer.body.utf8.count)
        buffer.writeString(answer.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
