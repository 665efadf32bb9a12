#if canImport(Glibc)
import Glibc
#endif
internal import CShoalShims

/// A host and port, written `host:port` (`[v6]:port` for IPv6).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init?(_ text: String) {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText) else { return nil }
        self.init(host: String(host), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// This host's name (`gethostname`), or nil if it has none.
public func currentHostName() -> String? {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
    let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return name.isEmpty ? nil : name
}

/// A blocking TCP socket; every wait is bounded with `poll`. After `startTLS` the same calls
/// send and receive through TLS.
public final class TCPSocket: @unchecked Sendable {
    public let fd: Int32
    private var closed = false
    private let closeLock = ConditionLock()
    private var tls: TLSSession?

    init(fd: Int32) { self.fd = fd }

    deinit { close() }

    public func close() {
        closeLock.withLock {
            if !closed { closed = true; tls = nil; Glibc.close(fd) }
        }
    }

    /// True once a TLS handshake has completed on this socket.
    public var isTLS: Bool { tls != nil }

    /// True when the kernel encrypts this TLS connection's sends (kernel TLS): sends then go from
    /// the caller's buffer as plain ones do. False without TLS, or with TLS in user space.
    public var kernelTLSSend: Bool { tls?.kernelSend ?? false }

    /// Runs a TLS handshake on this connected socket, as the server or (with the address it
    /// dialled, `host`, to check the peer's certificate against) as the client. Afterwards every
    /// send and receive goes through TLS.
    public func startTLS(_ context: TLSContext, host: String?, deadline: UInt64?) throws(CryptoError) {
        do { try Sockets.setBlocking(fd, false) } catch {
            throw CryptoError("cannot make the socket non-blocking for TLS: \(error)")
        }
        let session = try TLSSession(context: context, fd: fd, host: context.isServer ? nil : host)
        while true {
            var events: Int32
            switch session.handshakeStep(server: context.isServer) {
            case .done:
                tls = session
                return
            case .wantRead: events = POLLIN
            case .wantWrite: events = POLLOUT
            case .closed: throw CryptoError("the peer closed the connection during the TLS handshake")
            case .failed(let reason): throw CryptoError(reason)
            }
            do { try waitFor(events, deadline: deadline) } catch {
                throw CryptoError(error.errno == ETIMEDOUT ? "the TLS handshake timed out" : "TLS handshake: \(error)")
            }
        }
    }

    /// Data already received through TLS that `poll` on the descriptor cannot see.
    public var hasBufferedData: Bool { tls?.hasBufferedData ?? false }

    /// Stops reads and writes (wakes a thread blocked on this socket) without freeing the fd.
    public func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// Sends `farewell`, ends the sending side and reads (discarding) until the peer closes or
    /// `lingerNanos` pass, then closes. Closing with unread bytes would send a reset that can
    /// destroy the farewell in the peer's receive buffer before it is read.
    public func closeAfterSending(_ farewell: [UInt8], lingerNanos: UInt64) {
        let deadline = monotonicNanos() + lingerNanos
        _ = try? send(farewell, deadline: deadline)
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { continue }
            if n == 0 { break }
            let e = currentErrno()
            if e == EINTR { continue }
            guard e == EAGAIN, (try? waitFor(POLLIN, deadline: deadline)) != nil else { break }
        }
        close()
    }

    private static func resolve(_ endpoint: Endpoint, passive: Bool) throws(SysError) -> [(Int32, [UInt8])] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        if passive { hints.ai_flags = AI_PASSIVE }
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &result)
        guard rc == 0, let first = result else {
            throw SysError("resolve \(endpoint): \(String(cString: gai_strerror(rc)))", errno: EINVAL)
        }
        defer { freeaddrinfo(first) }
        var out: [(Int32, [UInt8])] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            let bytes = Array(UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: Int(ai.pointee.ai_addrlen)))
            out.append((ai.pointee.ai_family, bytes))
            p = ai.pointee.ai_next
        }
        return out
    }

    /// Listens on `endpoint` (port 0 picks a free one); returns the socket and the bound port.
    /// `reusePort`: SO_REUSEPORT, so that several sockets (one per io shard) listen on the same
    /// port and the kernel spreads new connections over them.
    public static func listen(_ endpoint: Endpoint, backlog: Int32 = 1024, reusePort: Bool = false) throws(SysError) -> (TCPSocket, UInt16) {
        let addresses = try resolve(endpoint, passive: true)
        var lastError = SysError("listen \(endpoint): no address", errno: EADDRNOTAVAIL)
        for (family, addr) in addresses {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = SysError("socket", errno: currentErrno()); continue }
            let s = TCPSocket(fd: fd)
            do {
                try Sockets.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
                if reusePort { try Sockets.setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }
            } catch {
                lastError = error
                continue
            }
            let bound = addr.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if bound != 0 { lastError = SysError("bind \(endpoint)", errno: currentErrno()); continue }
            if Glibc.listen(fd, backlog) != 0 { lastError = SysError("listen \(endpoint)", errno: currentErrno()); continue }
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
            let port: UInt16 = withUnsafeBytes(of: storage) { raw in
                // sin_port and sin6_port sit at the same offset, in network byte order.
                UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            }
            return (s, port)
        }
        throw lastError
    }

    /// Accepts a connection; nil when the listener was shut down.
    public func accept() throws(SysError) -> TCPSocket? {
        while true {
            let fd = shoal_accept_cloexec(self.fd)
            if fd >= 0 {
                let s = TCPSocket(fd: fd)
                try s.setNoDelay()
                return s
            }
            let e = currentErrno()
            switch e {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EINVAL, EBADF: return nil
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                usleep(10_000)  // out of descriptors or memory: back off instead of spinning
                continue
            default: throw SysError("accept", errno: e)
            }
        }
    }

    /// Connects with a deadline. A connection that reached itself (a port in the ephemeral
    /// range with nothing listening, which the kernel may pick as this socket's own port) is
    /// closed and reported as nothing listening there.
    public static func connect(_ endpoint: Endpoint, timeoutMillis: Int32) throws(SysError) -> TCPSocket {
        try connect(endpoint, timeoutMillis: timeoutMillis, bindingTo: nil)
    }

    /// `bindingTo` fixes the local address first (tests use it to make a connection reach itself).
    static func connect(_ endpoint: Endpoint, timeoutMillis: Int32, bindingTo local: Endpoint?) throws(SysError) -> TCPSocket {
        let addresses = try resolve(endpoint, passive: false)
        var lastError = SysError("connect \(endpoint): no address", errno: EADDRNOTAVAIL)
        for (family, addr) in addresses {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { lastError = SysError("socket", errno: currentErrno()); continue }
            let s = TCPSocket(fd: fd)
            if let local, let (_, bytes) = try resolve(local, passive: true).first(where: { $0.0 == family }) {
                do { try Sockets.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR") } catch { lastError = error; continue }
                let bound = bytes.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(bytes.count)) }
                if bound != 0 { lastError = SysError("bind \(local)", errno: currentErrno()); continue }
            }
            let rc = addr.withUnsafeBytes { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if rc != 0 {
                let e = currentErrno()
                guard e == EINPROGRESS else { lastError = SysError("connect \(endpoint)", errno: e); continue }
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let pr = poll(&pfd, 1, timeoutMillis)
                if pr == 0 { lastError = SysError("connect \(endpoint): timed out", errno: ETIMEDOUT); continue }
                var soError: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
                if soError != 0 { lastError = SysError("connect \(endpoint)", errno: soError); continue }
            }
            if s.isConnectedToItself {
                lastError = SysError("connect \(endpoint): the connection reached itself, so nothing listens there "
                                     + "(a port in this host's ephemeral range, /proc/sys/net/ipv4/ip_local_port_range, can do that); "
                                     + "start the worker or check its address", errno: ECONNREFUSED)
                continue
            }
            do {
                try Sockets.setBlocking(fd, true)
                try s.setNoDelay()
            } catch {
                lastError = error
                continue
            }
            return s
        }
        throw lastError
    }

    /// Whether the local and the peer address are the same (a TCP self-connect).
    var isConnectedToItself: Bool {
        func address(_ get: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> [UInt8]? {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let rc = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { get(fd, $0, &len) } }
            guard rc == 0 else { return nil }
            return withUnsafeBytes(of: storage) { Array($0.prefix(Int(len))) }
        }
        guard let mine = address({ getsockname($0, $1, $2) }), let peer = address({ getpeername($0, $1, $2) }) else { return false }
        return mine == peer
    }

    public func setNoDelay() throws(SysError) { try Sockets.setNoDelay(fd) }

    /// Asks for larger socket buffers; the kernel caps them at its own limits (not an error).
    public func setBufferSizes(_ bytes: Int32) throws(SysError) {
        try Sockets.setOption(fd, SOL_SOCKET, SO_SNDBUF, bytes, "SO_SNDBUF")
        try Sockets.setOption(fd, SOL_SOCKET, SO_RCVBUF, bytes, "SO_RCVBUF")
    }

    /// Waits until the socket is ready for `events`, or the deadline passes (none: no limit).
    private func waitFor(_ events: Int32, deadline: UInt64?) throws(SysError) {
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let now = monotonicNanos()
                if now >= deadline { throw SysError("socket wait", errno: ETIMEDOUT) }
                timeout = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
            }
            var pfd = pollfd(fd: fd, events: Int16(events), revents: 0)
            let r = poll(&pfd, 1, timeout)
            if r > 0 { return }
            if r < 0 && currentErrno() != EINTR { throw SysError("poll", errno: currentErrno()) }
        }
    }

    /// Sends all of the gathered pieces (one writev per step, so a frame header and its data
    /// leave together without being copied into one buffer). Each step tries the send first and
    /// waits only when the socket buffer is full: one syscall when there is room.
    public func send(_ pieces: [UnsafeRawBufferPointer], deadline: UInt64? = nil) throws(SysError) {
        if let tls { return try tlsSend(tls, pieces, deadline: deadline) }
        var vecs = pieces.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var first = 0
        while first < vecs.count {
            var msg = msghdr()
            let n = vecs.withUnsafeMutableBufferPointer { buf -> Int in
                msg.msg_iov = buf.baseAddress! + first
                msg.msg_iovlen = buf.count - first
                return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n < 0 {
                let e = currentErrno()
                if e == EINTR { continue }
                if e == EAGAIN { try waitFor(POLLOUT, deadline: deadline); continue }
                throw SysError("send", errno: e)
            }
            var left = n
            while left > 0 && first < vecs.count {
                if left >= vecs[first].iov_len {
                    left -= vecs[first].iov_len
                    first += 1
                } else {
                    vecs[first].iov_base += left
                    vecs[first].iov_len -= left
                    left = 0
                }
            }
        }
    }

    public func send(_ bytes: [UInt8], deadline: UInt64? = nil) throws {
        try bytes.withUnsafeBytes { try send([$0], deadline: deadline) }
    }

    /// Receives exactly `count` bytes into `buffer`, then `count2` into `buffer2` when given (a
    /// frame's data and the trailer behind it); throws ECONNRESET-style errors on a closed peer
    /// (`errno` 0 with "closed" for an orderly close before any byte of this read). Tries the
    /// receive first and waits only when nothing has arrived: one syscall when all of it is there.
    public func receive(into buffer: UnsafeMutableRawPointer, count: Int, then buffer2: UnsafeMutableRawPointer? = nil, count count2: Int = 0,
                        deadline: UInt64? = nil) throws(SysError) {
        if let tls {
            func fill(_ p: UnsafeMutableRawPointer, _ n: Int) throws(SysError) {
                var done = 0
                while done < n { done += try tlsReadSome(tls, into: p + done, max: n - done, deadline: deadline, midFrame: done > 0) }
            }
            try fill(buffer, count)
            if let buffer2 { try fill(buffer2, count2) }
            return
        }
        // With a receive timeout set, all of it in one blocking call when it arrives in time
        // (MSG_WAITALL); otherwise try first and poll only when nothing has arrived.
        let second = buffer2 == nil ? 0 : count2
        let flags = blockingReceives ? Int32(MSG_WAITALL) : Int32(MSG_DONTWAIT)
        var done = 0
        while done < count + second {
            let n = withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2) { vecs -> Int in
                var used = 0
                if done < count {
                    vecs[used] = iovec(iov_base: buffer + done, iov_len: count - done)
                    used += 1
                }
                if let buffer2, second > 0 {
                    let skip = max(0, done - count)
                    vecs[used] = iovec(iov_base: buffer2 + skip, iov_len: second - skip)
                    used += 1
                }
                var msg = msghdr()
                msg.msg_iov = vecs.baseAddress
                msg.msg_iovlen = used
                return recvmsg(fd, &msg, flags)
            }
            if n > 0 { done += n; continue }
            if n == 0 { throw SysError(done == 0 ? "connection closed by peer" : "connection closed mid-frame", errno: ECONNRESET) }
            let e = currentErrno()
            if e == EINTR { continue }
            guard e == EAGAIN else { throw SysError("recvmsg", errno: e) }
            try awaitData(deadline: deadline)
        }
    }

    /// After a receive found nothing: with a receive timeout the kernel has waited already (past
    /// the deadline it is a timeout); without, poll until data comes or the deadline passes.
    private func awaitData(deadline: UInt64?) throws(SysError) {
        if blockingReceives {
            if let deadline, monotonicNanos() >= deadline { throw SysError("recv", errno: ETIMEDOUT) }
        } else {
            try waitFor(POLLIN, deadline: deadline)
        }
    }

    /// One TLS read of up to `max` bytes (at least one), waiting as OpenSSL asks.
    private func tlsReadSome(_ tls: TLSSession, into buffer: UnsafeMutableRawPointer, max: Int, deadline: UInt64?,
                             midFrame: Bool) throws(SysError) -> Int {
        while true {
            var n = 0
            switch tls.read(buffer, max, read: &n) {
            case .done: return n
            case .wantRead: try waitFor(POLLIN, deadline: deadline)
            case .wantWrite: try waitFor(POLLOUT, deadline: deadline)
            case .closed: throw SysError(midFrame ? "connection closed mid-frame" : "connection closed by peer", errno: ECONNRESET)
            case .failed(let reason): throw SysError("TLS receive: \(reason)", errno: EPROTO)
            }
        }
    }

    /// Receives what has arrived, up to `max` bytes (waiting only when nothing has): at least one
    /// byte, or a throw.
    public func receiveSome(into buffer: UnsafeMutableRawPointer, max: Int, deadline: UInt64? = nil) throws(SysError) -> Int {
        if let tls { return try tlsReadSome(tls, into: buffer, max: max, deadline: deadline, midFrame: false) }
        while true {
            // With a receive timeout set, one blocking recv waits (one syscall, not recv + poll + recv).
            let n = recv(fd, buffer, max, blockingReceives ? 0 : Int32(MSG_DONTWAIT))
            if n > 0 { return n }
            if n == 0 { throw SysError("connection closed by peer", errno: ECONNRESET) }
            let e = currentErrno()
            if e == EINTR { continue }
            guard e == EAGAIN else { throw SysError("recv", errno: e) }
            try awaitData(deadline: deadline)
        }
    }

    /// True once `setReceiveTimeout` made receives block in the kernel (plain TCP only).
    private var blockingReceives = false

    /// Makes receives on this (blocking, plain TCP) socket wait in the kernel for up to `nanos` per
    /// call (SO_RCVTIMEO), so that a receive that has to wait is one syscall; deadlines still
    /// hold across calls.
    public func setReceiveTimeout(nanos: UInt64) throws(SysError) {
        guard tls == nil else { return }
        var tv = timeval(tv_sec: Int(nanos / 1_000_000_000), tv_usec: Int(nanos % 1_000_000_000 / 1000))
        guard setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw SysError("setsockopt SO_RCVTIMEO", errno: currentErrno())
        }
        blockingReceives = true
    }

    /// Waits for the first byte to arrive and returns it without consuming it (the worker looks
    /// at a connection's first byte to tell a plain Shoal client from a TLS one).
    public func peekByte(deadline: UInt64?) throws(SysError) -> UInt8 {
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n == 1 { return byte }
            if n == 0 { throw SysError("connection closed by peer", errno: ECONNRESET) }
            let e = currentErrno()
            if e == EINTR { continue }
            if e != EAGAIN { throw SysError("recv", errno: e) }
            try waitFor(POLLIN, deadline: deadline)
        }
    }

    /// TLS has no gather write: small pieces (a header, a tag) are joined so that they leave in
    /// one record with what follows them; large ones are written where they lie.
    private func tlsSend(_ tls: TLSSession, _ pieces: [UnsafeRawBufferPointer], deadline: UInt64?) throws(SysError) {
        var staged: [UInt8] = []
        for piece in pieces where piece.count > 0 {
            if piece.count <= 16 * 1024 {
                staged.append(contentsOf: piece)
                continue
            }
            if !staged.isEmpty {
                try tlsWrite(tls, staged, deadline: deadline)
                staged.removeAll(keepingCapacity: true)
            }
            try tlsWrite(tls, piece.baseAddress!, piece.count, deadline: deadline)
        }
        if !staged.isEmpty { try tlsWrite(tls, staged, deadline: deadline) }
    }

    private func tlsWrite(_ tls: TLSSession, _ bytes: [UInt8], deadline: UInt64?) throws(SysError) {
        let result = bytes.withUnsafeBytes { b in
            Result { () throws(SysError) in try tlsWrite(tls, b.baseAddress!, b.count, deadline: deadline) }
        }
        try result.get()
    }

    private func tlsWrite(_ tls: TLSSession, _ p: UnsafeRawPointer, _ count: Int, deadline: UInt64?) throws(SysError) {
        var done = 0
        while done < count {
            var n = 0
            // After a want-read/write OpenSSL needs the same arguments again: `done` is unchanged.
            switch tls.write(p + done, count - done, written: &n) {
            case .done: done += n
            case .wantRead: try waitFor(POLLIN, deadline: deadline)
            case .wantWrite: try waitFor(POLLOUT, deadline: deadline)
            case .closed: throw SysError("TLS send: connection closed by peer", errno: ECONNRESET)
            case .failed(let reason): throw SysError("TLS send: \(reason)", errno: EPROTO)
            }
        }
    }

    public func receive(count: Int, deadline: UInt64? = nil) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if count > 0 {
            try out.withUnsafeMutableBytes { try receive(into: $0.baseAddress!, count: count, deadline: deadline) }
        }
        return out
    }

    /// Reads and throws away `count` bytes.
    public func discard(count: Int, deadline: UInt64? = nil) throws {
        var left = count
        var scratch = [UInt8](repeating: 0, count: min(count, 65536))
        while left > 0 {
            let n = min(left, scratch.count)
            try scratch.withUnsafeMutableBytes { try receive(into: $0.baseAddress!, count: n, deadline: deadline) }
            left -= n
        }
    }
}

extension TCPSocket {
    /// Indexes of `sockets` with data to read (or closed), waiting up to `timeoutMillis`.
    public static func readable(_ sockets: [TCPSocket], timeoutMillis: Int32) throws(SysError) -> [Int] {
        var fds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        // TLS may already hold a reply that poll cannot see: then only look, do not wait.
        let buffered = sockets.indices.filter { sockets[$0].hasBufferedData }
        while true {
            let r = poll(&fds, nfds_t(fds.count), buffered.isEmpty ? timeoutMillis : 0)
            if r >= 0 { break }
            let e = currentErrno()
            if e != EINTR { throw SysError("poll", errno: e) }
        }
        return fds.indices.filter { fds[$0].revents != 0 || buffered.contains($0) }
    }
}

/// Calls on raw socket descriptors for the io shards (which own their sockets' fds), each result
/// checked.
public enum Sockets {
    /// Sets an integer socket option; `name` says which in the error.
    public static func setOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32, _ name: String) throws(SysError) {
        var v = value
        guard setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SysError("setsockopt \(name)", errno: currentErrno())
        }
    }

    public static func setNoDelay(_ fd: Int32) throws(SysError) {
        try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY")
    }

    /// Makes `fd` blocking (or not).
    public static func setBlocking(_ fd: Int32, _ blocking: Bool) throws(SysError) {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0 else { throw SysError("fcntl F_GETFL", errno: currentErrno()) }
        let wanted = blocking ? flags & ~Int32(O_NONBLOCK) : flags | Int32(O_NONBLOCK)
        guard wanted == flags || fcntl(fd, F_SETFL, wanted) == 0 else { throw SysError("fcntl F_SETFL", errno: currentErrno()) }
    }

    /// Sends what fits now without waiting (a refusal's few bytes); returns the bytes sent.
    @discardableResult
    public static func sendNow(_ fd: Int32, _ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { max(0, Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))) }
    }

    /// Ends both directions: an operation waiting on the socket completes.
    public static func shutdown(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// Ends the sending side after the last bytes (a farewell), so they are read before the close.
    public static func shutdownWrite(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }
}

/// A worker probed without waiting: a TCP connect is started, and once it completes `greeting`
/// (the first frame of a handshake) is sent; the probe succeeds when the peer answers with any
/// byte. A process that is hung, or a host cut off, leaves it pending; a closed port fails it.
/// A client probes the workers it marked down this way in the background of its own calls.
public final class ConnectProbe: @unchecked Sendable {
    public enum State: Equatable, Sendable { case pending, connected, failed }
    private var fd: Int32 = -1
    private var known: State = .pending
    private var connected = false
    private let greeting: [UInt8]
    public let startedNanos = monotonicNanos()

    public init(_ endpoint: Endpoint, greeting: [UInt8] = []) {
        self.greeting = greeting
        guard let (family, addr) = try? TCPSocket.resolveFirst(endpoint) else { known = .failed; return }
        fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { known = .failed; return }
        let rc = addr.withUnsafeBytes { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
        if rc == 0 { connectedNow() } else if currentErrno() != EINPROGRESS { known = .failed }
    }

    deinit { close() }

    private func connectedNow() {
        connected = true
        guard !greeting.isEmpty else { known = .connected; return }
        let sent = greeting.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        if sent != greeting.count { known = .failed }
    }

    /// Where the probe stands now (no wait).
    public var state: State {
        guard known == .pending, fd >= 0 else { return known }
        if !connected {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pfd, 1, 0) > 0 else { return .pending }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            guard soError == 0 else { known = .failed; return known }
            connectedNow()
            if known != .pending { return known }
        }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 0) > 0 else { return .pending }
        var byte: UInt8 = 0
        known = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) > 0 ? .connected : .failed
        return known
    }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}

extension TCPSocket {
    static func resolveFirst(_ endpoint: Endpoint) throws(SysError) -> (Int32, [UInt8]) {
        guard let first = try resolve(endpoint, passive: false).first else { throw SysError("connect \(endpoint): no address", errno: EADDRNOTAVAIL) }
        return first
    }
}
