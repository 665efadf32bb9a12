import NIOCore
import NIOHTTP1
import NIOPosix
import ShoalSys

/// An admin HTTP answer.
public struct AdminResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: String
}

/// The admin HTTP port (/metrics, /healthz, /status) on SwiftNIO.
public final class AdminServer: Sendable {
    private let channel: any Channel
    public let port: Int

    public init(endpoint: Endpoint, route: @escaping @Sendable (String, String) -> AdminResponse) async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(AdminHandler(route: route))
                }
            }
        channel = try await bootstrap.bind(host: endpoint.host, port: Int(endpoint.port)).get()
        port = channel.localAddress?.port ?? Int(endpoint.port)
    }

    public func close() async {
        try? await channel.close()
    }
}

private final class AdminHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let route: @Sendable (String, String) -> AdminResponse

    init(route: @escaping @Sendable (String, String) -> AdminResponse) { self.route = route }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let answer = route(head.method.rawValue, head.uri)
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
