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
    /// The answer to HEAD requests, when it differs from the GET's.
    private var headResponse: String?
    /// Body bytes sent before the response pauses (until `release`), or before the connection
    /// is closed (`truncate`).
    private var holdAfter: Int?
    private var truncate = false
    private var released = false
    /// Serving one object by range (`serveObject`): its bytes and etag.
    private var object: (body: [UInt8], etag: String)?

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

    /// Serves one object as a store does: HEAD with its length and etag, GET of `Range: bytes=a-b`
    /// with 206 and that slice (holds and cuts apply to it), GET without a range with it all.
    public func serveObject(_ body: [UInt8], etag: String) {
        lock.withLock { object = (body, etag) }
    }

    /// Answers HEAD requests with `status` and these headers (and no body) from now on.
    public func respondToHead(_ status: String, headers: [String]) {
        lock.withLock { headResponse = "HTTP/1.1 \(status)\r\n" + headers.map { $0 + "\r\n" }.joined() }
    }

    /// GET bodies stop after `bytes` until `release()` is called (a slow store, mid-body).
    public func hold(after bytes: Int) {
        lock.withLock {
            holdAfter = bytes
            truncate = false
            released = false
        }
    }

    /// GET bodies end after `bytes`, short of their length, and the connection closes.
    public func cut(after bytes: Int) {
        lock.withLock {
            holdAfter = bytes
            truncate = true
        }
    }

    /// Lets held bodies go on, and sends later ones whole.
    public func release() {
        lock.withLock {
            released = true
            holdAfter = nil
        }
        lock.broadcast()
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
            let isHead = request.hasPrefix("HEAD")
            let (h, body, holdAfter, truncate) = lock.withLock { () -> (String, [UInt8], Int?, Bool) in
                seen.append(request)
                if let object {
                    let common = "ETag: \(object.etag)\r\n"
                    if isHead { return ("HTTP/1.1 200 OK\r\n" + common + "Content-Length: \(object.body.count)\r\n", [], nil, false) }
                    if let (a, b) = CannedHTTPServer.range(request), a < object.body.count {
                        let end = min(b, object.body.count - 1)
                        let slice = Array(object.body[a...end])
                        return ("HTTP/1.1 206 Partial Content\r\n" + common + "Content-Range: bytes \(a)-\(end)/\(object.body.count)\r\n"
                                + "Content-Length: \(slice.count)\r\n", slice, self.holdAfter, self.truncate)
                    }
                    return ("HTTP/1.1 200 OK\r\n" + common + "Content-Length: \(object.body.count)\r\n", object.body, self.holdAfter, self.truncate)
                }
                if isHead, let headResponse { return (headResponse, [], nil, false) }
                return (response.head, response.body, self.holdAfter, self.truncate)
            }
            let deadline = monotonicNanos() + 5_000_000_000
            if isHead {
                // HEAD responses carry the length but no body.
                try? connection.send(Array((h + "Connection: close\r\n\r\n").utf8), deadline: deadline)
            } else if let holdAfter, holdAfter < body.count {
                try? connection.send(Array((h + "Connection: close\r\n\r\n").utf8) + body[..<holdAfter], deadline: deadline)
                if !truncate {
                    lock.lock()
                    let until = monotonicNanos() + 20_000_000_000
                    while !released && monotonicNanos() < until { _ = lock.wait(untilNanos: until) }
                    lock.unlock()
                    try? connection.send(Array(body[holdAfter...]), deadline: monotonicNanos() + 5_000_000_000)
                }
            } else {
                try? connection.send(Array((h + "Connection: close\r\n\r\n").utf8) + body, deadline: deadline)
            }
            connection.close()
        }
    }
}

extension CannedHTTPServer {
    /// The `Range: bytes=a-b` of a request's header block.
    static func range(_ request: String) -> (Int, Int)? {
        for line in request.split(separator: "\r\n") where line.lowercased().hasPrefix("range: bytes=") {
            let spec = line.dropFirst("range: bytes=".count).split(separator: "-")
            if spec.count == 2, let a = Int(spec[0]), let b = Int(spec[1]), a <= b { return (a, b) }
        }
        return nil
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
