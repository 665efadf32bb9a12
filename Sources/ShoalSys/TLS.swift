#if canImport(Glibc)
import Glibc
#endif
internal import COpenSSL
internal import CShoalTLS

/// An OpenSSL context for the TCP data plane: TLS 1.3 only, with kernel TLS asked for (it takes
/// effect only where the kernel has its TLS module; elsewhere OpenSSL encrypts in user space).
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let isServer: Bool

    private init(server: Bool) throws(CryptoError) {
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw CryptoError("cannot create a TLS context: \(openSSLErrors())")
        }
        context = ctx
        isServer = server
        guard shoal_ssl_ctx_require_tls13(ctx) == 1 else { throw CryptoError("cannot require TLS 1.3: \(openSSLErrors())") }
        shoal_ssl_ctx_enable_ktls(ctx)
    }

    deinit { SSL_CTX_free(context) }

    /// A worker's context: its certificate chain and private key, both PEM files.
    public static func server(certificateFile: String, keyFile: String) throws(CryptoError) -> TLSContext {
        let c = try TLSContext(server: true)
        guard SSL_CTX_use_certificate_chain_file(c.context, certificateFile) == 1 else {
            throw CryptoError("cannot load the TLS certificate \(certificateFile) (a PEM certificate chain is expected): \(openSSLErrors())")
        }
        guard SSL_CTX_use_PrivateKey_file(c.context, keyFile, X509_FILETYPE_PEM) == 1 else {
            let reasons = openSSLErrors()
            if reasons.contains("key values mismatch") {
                throw CryptoError("the TLS private key \(keyFile) does not belong to the certificate \(certificateFile)")
            }
            throw CryptoError("cannot load the TLS private key \(keyFile) (a PEM key is expected): \(reasons)")
        }
        guard SSL_CTX_check_private_key(c.context) == 1 else {
            throw CryptoError("the TLS private key \(keyFile) does not belong to the certificate \(certificateFile): \(openSSLErrors())")
        }
        return c
    }

    /// A client's context: workers must present a certificate signed by a CA in `caFile` (PEM)
    /// and valid for the address the client dials.
    public static func client(caFile: String) throws(CryptoError) -> TLSContext {
        let c = try TLSContext(server: false)
        guard SSL_CTX_load_verify_locations(c.context, caFile, nil) == 1 else {
            throw CryptoError("cannot load the TLS CA file \(caFile) (PEM certificates are expected): \(openSSLErrors())")
        }
        SSL_CTX_set_verify(c.context, SSL_VERIFY_PEER, nil)
        return c
    }
}

/// What an SSL call on a connection came to.
enum TLSStep { case done, wantRead, wantWrite, closed, failed(String) }

/// Classifies the result of an SSL call on `ssl` (`rc` as returned by it; `savedErrno` the
/// errno right after it). Drains this thread's OpenSSL error queue into the failure's reason.
func tlsStep(_ ssl: OpaquePointer, _ rc: Int32, errno savedErrno: Int32) -> TLSStep {
    if rc == 1 { return .done }
    switch SSL_get_error(ssl, rc) {
    case SSL_ERROR_WANT_READ: return .wantRead
    case SSL_ERROR_WANT_WRITE: return .wantWrite
    case SSL_ERROR_ZERO_RETURN: return .closed
    case SSL_ERROR_SYSCALL:
        let reasons = openSSLErrors()
        if savedErrno == 0 && reasons.isEmpty { return .closed }
        return .failed(reasons.isEmpty ? String(cString: strerror(savedErrno)) : reasons)
    default:
        let reasons = openSSLErrors()
        let verify = SSL_get_verify_result(ssl)
        if verify != Int(X509_V_OK) {
            return .failed("certificate verify failed: \(String(cString: X509_verify_cert_error_string(verify)))")
        }
        return .failed(reasons.isEmpty ? "TLS protocol error" : reasons)
    }
}

/// Makes `ssl` check that the peer's certificate is valid for `host` (an IP address or a DNS
/// name), and for a name asks for it by SNI.
func expectPeerName(_ ssl: OpaquePointer, _ host: String) throws(CryptoError) {
    var addr = in6_addr()
    let isAddress = inet_pton(AF_INET, host, &addr) == 1 || inet_pton(AF_INET6, host, &addr) == 1
    let param = SSL_get0_param(ssl)
    let set = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(param, host) : X509_VERIFY_PARAM_set1_host(param, host, 0)
    guard set == 1 else { throw CryptoError("cannot set the expected TLS name \(host): \(openSSLErrors())") }
    if !isAddress { _ = shoal_ssl_set_server_name(ssl, host) }
}

/// One connection's TLS state, owned by its `TCPSocket`.
final class TLSSession {
    let ssl: OpaquePointer
    /// True when the kernel encrypts what this connection sends (kernel TLS): then a send goes
    /// from the caller's buffer into the kernel as a plain send does, with no copy in user space.
    private(set) var kernelSend = false

    init(context: TLSContext, fd: Int32, host: String?) throws(CryptoError) {
        guard let ssl = SSL_new(context.context) else { throw CryptoError("cannot create a TLS connection: \(openSSLErrors())") }
        self.ssl = ssl
        guard SSL_set_fd(ssl, fd) == 1 else { throw CryptoError("cannot attach TLS to the socket: \(openSSLErrors())") }
        if let host { try expectPeerName(ssl, host) }
    }

    deinit { SSL_free(ssl) }

    typealias Step = TLSStep

    /// Classifies the result of an SSL call (`rc` as returned by it).
    func step(_ rc: Int32, errno savedErrno: Int32) -> Step { tlsStep(ssl, rc, errno: savedErrno) }

    /// OpenSSL writes to the socket with write(2), which raises SIGPIPE when the peer has gone;
    /// a library must not kill its host process for that, nor change the process's handlers.
    /// So SIGPIPE is blocked on this thread around the call, and one it raised is taken back.
    @inline(__always)
    private func withoutSIGPIPE<T>(_ body: () -> T) -> T {
        var pipe = sigset_t()
        sigemptyset(&pipe)
        sigaddset(&pipe, SIGPIPE)
        var old = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipe, &old)
        var pending = sigset_t()
        sigpending(&pending)
        let wasPending = sigismember(&pending, SIGPIPE) == 1
        let result = body()
        let e = currentErrno()
        if !wasPending {
            sigpending(&pending)
            if sigismember(&pending, SIGPIPE) == 1 {
                var none = timespec(tv_sec: 0, tv_nsec: 0)
                _ = sigtimedwait(&pipe, nil, &none)
            }
        }
        pthread_sigmask(SIG_SETMASK, &old, nil)
        errno = e
        return result
    }

    func handshakeStep(server: Bool) -> Step {
        ERR_clear_error()
        let rc = withoutSIGPIPE { server ? SSL_accept(ssl) : SSL_connect(ssl) }
        let e = currentErrno()
        let s = step(rc, errno: e)
        if case .done = s { kernelSend = shoal_ssl_ktls_send(ssl) == 1 }
        return s
    }

    func write(_ p: UnsafeRawPointer, _ count: Int, written: inout Int) -> Step {
        ERR_clear_error()
        let rc = withoutSIGPIPE { SSL_write_ex(ssl, p, count, &written) }
        return step(rc, errno: currentErrno())
    }

    func read(_ p: UnsafeMutableRawPointer, _ count: Int, read n: inout Int) -> Step {
        ERR_clear_error()
        // A read can write too (a TLS 1.3 key update or alert).
        let rc = withoutSIGPIPE { SSL_read_ex(ssl, p, count, &n) }
        return step(rc, errno: currentErrno())
    }

    /// Bytes already received and decrypted (or a record half read) that `poll` cannot see.
    var hasBufferedData: Bool { SSL_has_pending(ssl) == 1 }
}

/// TLS on a connection whose bytes the caller moves itself (the worker's io_uring loop): no
/// socket, two OpenSSL memory buffers instead. Ciphertext from the peer goes in with `feed`,
/// plaintext comes out with `readPlaintext`; plaintext goes in with `write`, ciphertext for the
/// peer comes out with `takeOutput`. Anything may leave output to send (handshake messages, a
/// TLS 1.3 key update answered by a read, the alert of a failed handshake): the caller sends
/// `pendingOutput` after every call, a failed one included.
///
/// One thread at a time uses an engine. OpenSSL's error queue is per thread and is drained into
/// a failure's reason by the call that saw it.
public final class TLSEngine: @unchecked Sendable {
    public enum Progress: Equatable, Sendable { case handshaking, established, closed, failed(String) }

    private let ssl: OpaquePointer
    /// Ciphertext received from the peer, which OpenSSL reads (owned by `ssl`).
    private let input: OpaquePointer
    /// Ciphertext OpenSSL wrote for the peer (owned by `ssl`).
    private let output: OpaquePointer
    public private(set) var progress: Progress = .handshaking
    /// Small pieces are gathered here up to a full record (16 KiB of plaintext), so a frame's
    /// header and tag do not each become a record of their own. Allocated by the first write.
    private var staging: UnsafeMutableRawPointer?
    private static let recordSize = 16384

    /// `context.isServer` gives the role. A client with `host` checks that the peer's
    /// certificate is valid for it (an IP address or a DNS name, which it also sends by SNI); a
    /// server ignores `host`.
    public init(context: TLSContext, host: String? = nil) throws(CryptoError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.context) else { throw CryptoError("cannot create a TLS connection: \(openSSLErrors())") }
        guard let input = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw CryptoError("cannot create a TLS input buffer: \(openSSLErrors())")
        }
        guard let output = BIO_new(BIO_s_mem()) else {
            _ = BIO_free(input)
            SSL_free(ssl)
            throw CryptoError("cannot create a TLS output buffer: \(openSSLErrors())")
        }
        // An empty memory buffer reads as "try again" (not the end of the stream), which
        // OpenSSL reports as SSL_ERROR_WANT_READ: the default, relied on here.
        SSL_set_bio(ssl, input, output)  // ssl owns both buffers from here on
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let host {
                do { try expectPeerName(ssl, host) } catch {
                    SSL_free(ssl)
                    throw error
                }
            }
        }
        self.ssl = ssl
        self.input = input
        self.output = output
    }

    deinit {
        SSL_free(ssl)
        staging?.deallocate()
    }

    /// Runs the handshake as far as the bytes received allow.
    private func handshake() -> Progress {
        guard progress == .handshaking else { return progress }
        ERR_clear_error()
        switch tlsStep(ssl, SSL_do_handshake(ssl), errno: 0) {
        case .done: progress = .established
        case .wantRead, .wantWrite: break
        case .closed: progress = .closed
        case .failed(let reason): progress = .failed(reason)
        }
        return progress
    }

    /// Starts the handshake: a client's ClientHello becomes pending output. A server only
    /// waits for the client's (calling this is harmless).
    public func start() -> Progress { handshake() }

    /// Buffers ciphertext received from the peer (a copy) and, while the handshake is not done,
    /// runs it as far as the bytes allow. After the handshake the bytes wait for `readPlaintext`.
    /// On a closed or failed connection the bytes are dropped.
    public func feed(_ ciphertext: UnsafeRawBufferPointer) -> Progress {
        guard progress == .handshaking || progress == .established else { return progress }
        var offset = 0
        while offset < ciphertext.count {
            ERR_clear_error()
            var written = 0
            guard BIO_write_ex(input, ciphertext.baseAddress! + offset, ciphertext.count - offset, &written) == 1, written > 0 else {
                let reasons = openSSLErrors()
                progress = .failed("cannot buffer received TLS data" + (reasons.isEmpty ? "" : ": \(reasons)"))
                return progress
            }
            offset += written
        }
        return handshake()
    }

    /// Decrypts buffered application data into `p`, up to `count` bytes (as many records as
    /// are whole in what was fed). Returns the bytes written, 0 when no whole record is there
    /// yet (or the handshake is still going), or nil when the connection has failed or the
    /// peer closed it (`progress` says which). Data decrypted before a failure or the peer's
    /// close is returned first; the next call returns nil.
    public func readPlaintext(into p: UnsafeMutableRawPointer, count: Int) -> Int? {
        if progress == .handshaking { _ = handshake() }
        switch progress {
        case .handshaking: return 0
        case .closed, .failed: return nil
        case .established: break
        }
        var total = 0
        while total < count {
            ERR_clear_error()
            var n = 0
            switch tlsStep(ssl, SSL_read_ex(ssl, p + total, count - total, &n), errno: 0) {
            case .done: total += n
            case .wantRead, .wantWrite: return total
            case .closed:
                progress = .closed
                return total > 0 ? total : nil
            case .failed(let reason):
                progress = .failed(reason)
                return total > 0 ? total : nil
            }
        }
        return total
    }

    /// Encrypts `count` bytes at `p` (all of them: with a memory buffer OpenSSL never has to
    /// wait to write). False, with `progress` set, on failure.
    private func encrypt(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            ERR_clear_error()
            var written = 0
            switch tlsStep(ssl, SSL_write_ex(ssl, p + done, count - done, &written), errno: 0) {
            case .done: done += written
            case .closed:
                progress = .closed
                return false
            case .failed(let reason):
                progress = .failed(reason)
                return false
            case .wantRead, .wantWrite:
                // Part of the plaintext may be out already: the stream cannot be resumed.
                progress = .failed("TLS write did not complete (OpenSSL asked to wait on a memory buffer)")
                return false
            }
        }
        return true
    }

    /// Encrypts every piece, whole and in order; the ciphertext becomes pending output. Pieces
    /// are sent as full records where they can be: small ones are gathered (copied) up to a
    /// record, large ones encrypted in place. False when the connection is not established
    /// (or no longer) or the write fails; then the connection is finished (`progress`).
    public func write(_ pieces: [UnsafeRawBufferPointer]) -> Bool {
        guard progress == .established else { return false }
        let record = TLSEngine.recordSize
        let staging = self.staging ?? UnsafeMutableRawPointer.allocate(byteCount: record, alignment: 16)
        self.staging = staging
        var staged = 0
        for piece in pieces where piece.count > 0 {
            let base = piece.baseAddress!
            var offset = 0
            while offset < piece.count {
                let left = piece.count - offset
                if staged == 0 && left >= record {
                    // Whole records straight from the caller's buffer; the tail is staged.
                    let whole = left - left % record
                    guard encrypt(base + offset, whole) else { return false }
                    offset += whole
                } else {
                    let n = min(left, record - staged)
                    (staging + staged).copyMemory(from: base + offset, byteCount: n)
                    staged += n
                    offset += n
                    if staged == record {
                        guard encrypt(staging, staged) else { return false }
                        staged = 0
                    }
                }
            }
        }
        return staged == 0 || encrypt(staging, staged)
    }

    /// Ciphertext waiting to be sent to the peer, in bytes.
    public var pendingOutput: Int { Int(BIO_ctrl_pending(output)) }

    /// Moves up to `max` bytes of pending ciphertext into `p`; returns how many.
    public func takeOutput(into p: UnsafeMutableRawPointer, max: Int) -> Int {
        guard max > 0 else { return 0 }
        var n = 0
        guard BIO_read_ex(output, p, max, &n) == 1 else { return 0 }
        return n
    }
}
