import Glibc
import ShoalSys

/// A loopback TCP relay in front of a real service (the object store), which a test can cut off
/// to make that service unreachable, and restore.
public final class TCPRelay: @unchecked Sendable {
    public let target: Endpoint
    private let lock = ConditionLock()
    private var listener: TCPSocket?
    private var open: [TCPSocket] = []
    private var frozen = false
    private var held = false
    private var _accepted = 0
    public private(set) var port: UInt16 = 0

    /// Connections accepted so far.
    public var accepted: Int { lock.withLock { _accepted } }

    /// The address it listens on.
    public let host: String

    public init(to target: Endpoint, listenHost: String = "127.0.0.1") throws {
        self.target = target
        host = listenHost
        try start(port: 0)
    }

    public var endpoint: Endpoint { Endpoint(host: host, port: port) }

    /// Refuses new connections and breaks every open one.
    public func cut() {
        lock.withLock {
            listener?.shutdown()
            listener?.close()
            listener = nil
            open.forEach { $0.shutdown() }
            open.removeAll()
        }
    }

    /// A silent cut-off (a link down): connections stay open and new ones are accepted, but no
    /// byte goes through either way, and nothing says so.
    public func freeze() { lock.withLock { frozen = true } }

    /// A slow link: bytes wait (nothing is lost) until `release`.
    public func hold() { lock.withLock { held = true } }

    public func release() {
        lock.withLock { held = false }
        lock.broadcast()
    }

    /// Listens again on the same port.
    public func restore() throws { try start(port: port) }

    private func start(port: UInt16) throws {
        let (l, bound) = try TCPSocket.listen(Endpoint(host: host, port: port))
        lock.withLock {
            listener = l
            self.port = bound
        }
        try OSThread.spawn(name: "relay-accept") { [self] in
            while let client = try? l.accept() {
                let held = lock.withLock { () -> Bool in
                    _accepted += 1
                    if frozen { open.append(client) }
                    return frozen
                }
                if held { continue }
                guard let upstream = try? TCPSocket.connect(target, timeoutMillis: 2000) else { client.close(); continue }
                lock.withLock { open += [client, upstream] }
                try? OSThread.spawn(name: "relay-up") { [self] in pump(client, upstream) }
                try? OSThread.spawn(name: "relay-down") { [self] in pump(upstream, client) }
            }
        }
    }

    private func pump(_ from: TCPSocket, _ to: TCPSocket) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer {
            buffer.deallocate()
            to.shutdown()
        }
        while true {
            let n = recv(from.fd, buffer, 1 << 16, 0)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            lock.lock()
            while held && !frozen { _ = lock.wait() }
            let swallowed = frozen
            lock.unlock()
            if swallowed { continue }
            guard (try? to.send([UnsafeRawBufferPointer(start: buffer, count: n)], deadline: monotonicNanos() + 10_000_000_000)) != nil else { return }
        }
    }
}
