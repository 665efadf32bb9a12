import ShoalSys

/// Accepts TCP connections and runs each on its own OS thread with `handler`. `stop()` closes the
/// listener and shuts every live connection down, then waits for their threads to finish. A
/// connection over `maxConnections` is answered with `refusal`'s bytes (one thread sends them,
/// so a flood costs no thread per connection) and closed.
public final class TCPServer: @unchecked Sendable {
    public let port: UInt16
    private let listener: TCPSocket
    private let handler: @Sendable (TCPSocket) -> Void
    private let refusal: @Sendable () -> [UInt8]
    private let maxConnections: Int
    private let lock = ConditionLock()
    private var live: [ObjectIdentifier: TCPSocket] = [:]
    /// Refused connections waiting for their farewell; beyond `maxRefusing`, closed at once.
    private var refusing: [(TCPSocket, [UInt8])] = []
    private let maxRefusing = 64
    private var stopping = false
    private var acceptorDone = false
    private var refuserDone = false

    /// `refusal` is called once per connection refused for being over `maxConnections` (count
    /// and log it there) and returns what to send before closing it.
    public init(endpoint: Endpoint, maxConnections: Int = 1024, refusal: @escaping @Sendable () -> [UInt8] = { [] },
                handler: @escaping @Sendable (TCPSocket) -> Void) throws(SysError) {
        (listener, port) = try TCPSocket.listen(endpoint)
        self.handler = handler
        self.refusal = refusal
        self.maxConnections = maxConnections
    }

    public func start() throws(SysError) {
        do {
            try OSThread.spawn(name: "shoal-refuse") { [self] in refuseLoop() }
        } catch {
            lock.withLock { stopping = true; acceptorDone = true; refuserDone = true }
            throw error
        }
        do {
            try OSThread.spawn(name: "shoal-accept") { [self] in acceptLoop() }
        } catch {
            lock.withLock { stopping = true; acceptorDone = true }
            lock.broadcast()
            throw error
        }
    }

    private func acceptLoop() {
        defer { lock.withLock { acceptorDone = true }; lock.broadcast() }
        while true {
            guard let socket = try? listener.accept() else { return }
            enum Admission { case admitted, full, stopping }
            let admission: Admission = lock.withLock {
                if stopping { return .stopping }
                guard live.count < maxConnections else { return .full }
                live[ObjectIdentifier(socket)] = socket
                return .admitted
            }
            switch admission {
            case .stopping:
                socket.close()
                return
            case .full:
                refuse(socket)
                continue
            case .admitted:
                break
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

    private func refuse(_ socket: TCPSocket) {
        let farewell = refusal()
        let queued: Bool = lock.withLock {
            guard refusing.count < maxRefusing else { return false }
            refusing.append((socket, farewell))
            return true
        }
        if queued { lock.broadcast() } else { socket.close() }
    }

    /// Sends each refused connection its farewell, one at a time.
    private func refuseLoop() {
        defer { lock.withLock { refuserDone = true }; lock.broadcast() }
        while true {
            lock.lock()
            while refusing.isEmpty && !stopping { _ = lock.wait() }
            if stopping {
                let left = refusing
                refusing = []
                lock.unlock()
                left.forEach { $0.0.close() }
                return
            }
            let (socket, farewell) = refusing.removeFirst()
            lock.unlock()
            socket.closeAfterSending(farewell, lingerNanos: 200_000_000)
        }
    }

    public var connectionCount: Int { lock.withLock { live.count } }

    /// Stops accepting, wakes every connection and waits up to `timeoutNanos` for them to end.
    public func stop(timeoutNanos: UInt64 = 10_000_000_000) {
        let sockets: [TCPSocket] = lock.withLock {
            stopping = true
            return Array(live.values)
        }
        lock.broadcast()
        listener.shutdown()
        sockets.forEach { $0.shutdown() }
        let deadline = monotonicNanos() + timeoutNanos
        lock.lock()
        while (!live.isEmpty || !acceptorDone || !refuserDone) && monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
        lock.unlock()
        listener.close()
    }
}
