#if canImport(Glibc)
import Glibc
#endif
internal import COpenSSL
internal import CShoalShims

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
        if let host {
            var addr = in6_addr()
            let isAddress = inet_pton(AF_INET, host, &addr) == 1 || inet_pton(AF_INET6, host, &addr) == 1
            let param = SSL_get0_param(ssl)
            let set = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(param, host) : X509_VERIFY_PARAM_set1_host(param, host, 0)
            guard set == 1 else { throw CryptoError("cannot set the expected TLS name \(host): \(openSSLErrors())") }
            if !isAddress { _ = shoal_ssl_set_server_name(ssl, host) }
        }
    }

    deinit { SSL_free(ssl) }

    enum Step { case done, wantRead, wantWrite, closed, failed(String) }

    /// Classifies the result of an SSL call (`rc` as returned by it).
    func step(_ rc: Int32, errno savedErrno: Int32) -> Step {
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
