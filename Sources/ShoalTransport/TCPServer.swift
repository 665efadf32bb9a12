import ShoalSys

/// Accepts TCP connections and runs each on its own OS thread with `handler`. `stop()` closes the
/// listener and shuts every live connection down, then waits for their threads to finish.
public final class TCPServer: @unchecked Sendable {
    public let port: UInt16
    private let listener: TCPSocket
    private let handler: @Sendable (TCPSocket) -> Void
    private let maxConnections: Int
    private let lock = ConditionLock()
    private var live: [ObjectIdentifier: TCPSocket] = [:]
    private var stopping = false
    private var acceptorDone = false

    public init(endpoint: Endpoint, maxConnections: Int = 1024, handler: @escaping @Sendable (TCPSocket) -> Void) throws(SysError) {
        (listener, port) = try TCPSocket.listen(endpoint)
        self.handler = handler
        self.maxConnections = maxConnections
    }

    public func start() throws(SysError) {
        try OSThread.spawn(name: "shoal-accept") { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        defer { lock.withLock { acceptorDone = true }; lock.broadcast() }
        while true {
            guard let socket = try? listener.accept() else { return }
            let admitted: Bool = lock.withLock {
                guard !stopping, live.count < maxConnections else { return false }
                live[ObjectIdentifier(socket)] = socket
                return true
            }
            guard admitted else {
                socket.close()
                if lock.withLock({ stopping }) { return }
                continue
            }
            do {
                try OSThread.spawn(name: "shoal-conn") { [self] in
                    handler(socket)
                    socket.close()
                    lock.withLock { live[ObjectIdentifier(socket)] = nil }
                    lock.broadcast()
                }
            } catch {
                socket.close()
                lock.withLock { live[ObjectIdentifier(socket)] = nil }
            }
        }
    }

    public var connectionCount: Int { lock.withLock { live.count } }

    /// Stops accepting, wakes every connection and waits up to `timeoutNanos` for them to end.
    public func stop(timeoutNanos: UInt64 = 10_000_000_000) {
        let sockets: [TCPSocket] = lock.withLock {
            stopping = true
            return Array(live.values)
        }
        listener.shutdown()
        sockets.forEach { $0.shutdown() }
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        while (!live.isEmpty || !acceptorDone) && monotonicNanos() < deadline { lock.wait(untilNanos: deadline) }
        lock.unlock()
        listener.close()
    }
}
