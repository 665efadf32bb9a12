import ShoalSys

/// A loopback HTTP endpoint that answers every request with one fixed response, and records the
/// requests' header blocks. For behaviour no real store shows on demand (no ETag at all); every
/// other store test uses a real SeaweedFS.
public final class CannedHTTPServer: @unchecked Sendable {
    public let endpoint: Endpoint
    private let listener: TCPSocket
    private let lock = ConditionLock()
    private var seen: [String] = []
    private var response: (head: String, body: [UInt8]) = ("HTTP/1.1 500 Internal Server Error\r\n", [])

    public init() throws {
        let (listener, port) = try TCPSocket.listen(Endpoint(host: "127.0.0.1", port: 0))
        self.listener = listener
        endpoint = Endpoint(host: "127.0.0.1", port: port)
        try OSThread.spawn(name: "canned-http") { [self] in serve() }
    }

    deinit { listener.close() }

    /// Answers from now on with `status` (e.g. "200 OK"), these headers and this body.
    public func respond(_ status: String, headers: [String], body: [UInt8] = []) {
        let head = "HTTP/1.1 \(status)\r\n" + headers.map { $0 + "\r\n" }.joined() + "Content-Length: \(body.count)\r\n"
        lock.withLock { response = (head, body) }
    }

    /// The header blocks of the requests received so far.
    public var requests: [String] { lock.withLock { seen } }

    public var url: String { "http://\(endpoint)" }

    private func serve() {
        while let connection = try? listener.accept() {
            var head: [UInt8] = []
            while !head.ends(with: Array("\r\n\r\n".utf8)), let byte = try? connection.receive(count: 1, deadline: monotonicNanos() + 5_000_000_000) {
                head += byte
            }
            let request = String(decoding: head, as: UTF8.self)
            let (h, body) = lock.withLock { () -> (String, [UInt8]) in
                seen.append(request)
                return response
            }
            // HEAD responses carry the length but no body.
            let out = Array((h + "Connection: close\r\n\r\n").utf8) + (request.hasPrefix("HEAD") ? [] : body)
            try? connection.send(out, deadline: monotonicNanos() + 5_000_000_000)
            connection.close()
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
