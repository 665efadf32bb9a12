#if canImport(Glibc)
import Glibc
#endif
internal import CShoalCurl
import Synchronization

/// Where a response body goes: straight into a caller's buffer, or into a growing array.
public final class HTTPBodySink: @unchecked Sendable {
    let fixed: UnsafeMutableRawBufferPointer?
    let limit: Int
    let deliver: ((UnsafeRawBufferPointer) -> Bool)?
    /// Read on every piece of a body: a load, no lock.
    private let cancelFlag = Atomic<Bool>(false)
    /// The transfer was stopped on purpose (by `deliver` or `cancel`), not by a fault.
    public private(set) var stopped = false
    public private(set) var count = 0
    public private(set) var overflowed = false
    public private(set) var bytes: [UInt8] = []
    /// The body of an error response (status 300 and up), kept apart from the caller's buffer.
    public private(set) var errorBytes: [UInt8] = []

    func appendError(_ data: UnsafeRawPointer, _ n: Int) {
        if errorBytes.count < 64 * 1024 { errorBytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: min(n, 64 * 1024 - errorBytes.count))) }
    }

    /// Writes into `buffer`; more than fits marks `overflowed` and stops the transfer.
    public init(buffer: UnsafeMutableRawBufferPointer) {
        fixed = buffer
        limit = buffer.count
        deliver = nil
    }

    /// Collects up to `limit` bytes into `bytes`.
    public init(limit: Int) {
        fixed = nil
        self.limit = limit
        deliver = nil
    }

    /// Hands the body to `deliver` piece by piece as it arrives, for a response that goes on for
    /// as long as it is wanted (an etcd watch). `deliver` returning false ends the transfer, and
    /// so does `cancel` from another thread: curl looks at it about once a second even while no
    /// byte arrives. Either way the transfer ends without an error.
    public init(streaming deliver: @escaping (UnsafeRawBufferPointer) -> Bool) {
        fixed = nil
        limit = Int.max
        self.deliver = deliver
    }

    /// Ends a streaming transfer within about a second (any thread); a transfer into a buffer
    /// or an array ends when its next bytes come (a silent one at its stall limit).
    public func cancel() { cancelFlag.store(true, ordering: .releasing) }

    var cancelled: Bool {
        let c = cancelFlag.load(ordering: .acquiring)
        if c { stopped = true }
        return c
    }

    func append(_ data: UnsafeRawPointer, _ n: Int) -> Bool {
        if let deliver {
            count += n
            guard !cancelled, deliver(UnsafeRawBufferPointer(start: data, count: n)) else { stopped = true; return false }
            return true
        }
        guard !cancelled else { return false }
        guard count + n <= limit else { overflowed = true; return false }
        if let fixed {
            (fixed.baseAddress! + count).copyMemory(from: data, byteCount: n)
        } else {
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: n))
        }
        count += n
        return true
    }

    /// The body as text (for error documents), from either mode.
    public var text: String {
        if !errorBytes.isEmpty { return String(decoding: errorBytes, as: UTF8.self) }
        if let fixed { return String(decoding: UnsafeRawBufferPointer(start: fixed.baseAddress, count: min(count, 4096)), as: UTF8.self) }
        return String(decoding: bytes.prefix(4096), as: UTF8.self)
    }
}

/// An HTTP request for `CurlEasy`.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [String] = []
    /// Headers made as the transfer starts, sent after `headers`: a signature dated when the
    /// request goes out, not when it was queued (S3 refuses one over 15 minutes old).
    public var lateHeaders: (@Sendable () -> [String])?
    public var credentials: (user: String, password: String)?
    public var body: [UInt8]?
    /// Both limits are well under a Shoal client's request timeout (10 s), so a worker stuck on
    /// its store answers with an error naming the store before the client gives up on the worker.
    public static let defaultConnectTimeoutMillis = 2_000
    /// A transfer slower than 1 KiB/s for this long is aborted (a stall, not a total: big bodies
    /// may take as long as they keep moving).
    public static let defaultStallTimeoutSeconds = 5
    public var connectTimeoutMillis = HTTPRequest.defaultConnectTimeoutMillis
    /// 0: no stall limit (a watch may stay quiet for as long as nothing changes).
    public var stallTimeoutSeconds = HTTPRequest.defaultStallTimeoutSeconds
    /// A limit on the whole transfer; nil: none.
    public var totalTimeoutMillis: Int?

    public init(method: String, url: String) {
        self.method = method
        self.url = url
    }
}

/// The status and headers (lower-cased names) of a response.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [String: String]
}

/// A transfer that failed below HTTP (connect, timeout, DNS, ...).
public struct CurlError: Error, Sendable, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public var isTimeout: Bool { code == Int32(CURLE_OPERATION_TIMEDOUT.rawValue) }
    public var description: String { message }
}

/// A libcurl easy handle: one connection cache, reused across requests (keep-alive).
public final class CurlEasy: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

    /// SHOAL_CURL_VERBOSE=1 makes curl print each request and response head to stderr.
    private static let verbose = getenv("SHOAL_CURL_VERBOSE").map { String(cString: $0) == "1" } ?? false
    /// Loads libcurl on first use (it is not linked; see CShoalCurl): nil, or why it cannot be used.
    public static let unavailable: String? = {
        var error = [CChar](repeating: 0, count: 300)
        guard shoal_curl_load(&error, error.count) != 0 else { return nil }
        return String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()

    public init() throws(CurlError) {
        if let why = CurlEasy.unavailable { throw CurlError(code: -1, message: why) }
        guard let h = shoal_curl_easy_init() else { throw CurlError(code: -1, message: "curl_easy_init failed") }
        handle = h
    }

    deinit {
        shoal_curl_easy_cleanup(handle)
        errorBuffer.deallocate()
    }

    final class Context {
        let sink: HTTPBodySink
        let handle: UnsafeMutableRawPointer
        var headers: [String: String] = [:]
        var status: Int?
        init(sink: HTTPBodySink, handle: UnsafeMutableRawPointer) {
            self.sink = sink
            self.handle = handle
        }

        /// One line of a response head, as curl hands it over (its line break included). Parsed
        /// as bytes: a String per line, lower-cased and trimmed by Character, cost a 100 KiB GET
        /// as much as a fifth of its allocations.
        func header(line: UnsafeRawBufferPointer) {
            if line.starts(with: "HTTP/".utf8) {  // a new response (after 100 Continue)
                headers = [:]
                return
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return }
            func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0d || b == 0x0a }
            var start = colon + 1
            var end = line.count
            while start < end, isSpace(line[start]) { start += 1 }
            while end > start, isSpace(line[end - 1]) { end -= 1 }
            let name = String(unsafeUninitializedCapacity: colon) { (out: UnsafeMutableBufferPointer<UInt8>) -> Int in
                for i in 0..<colon {
                    let b = line[i]
                    out[i] = b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b | 0x20 : b
                }
                return colon
            }
            headers[name] = String(decoding: UnsafeRawBufferPointer(rebasing: line[start..<end]), as: UTF8.self)
        }
    }

    /// What one transfer keeps alive until it ends: its callbacks' context, its header list, the
    /// C strings and the body handed to curl.
    final class Transfer {
        let context: Context
        var headerList: UnsafeMutablePointer<curl_slist>?
        var cStrings: [UnsafeMutablePointer<CChar>] = []
        var bodyCopy: UnsafeMutableRawPointer?

        init(context: Context) { self.context = context }

        deinit {
            if let headerList { shoal_curl_slist_free_all(headerList) }
            cStrings.forEach { free($0) }
            bodyCopy.map { free($0) }
        }

        func keep(_ s: String) -> UnsafeMutablePointer<CChar> {
            let p = strdup(s)!
            cStrings.append(p)
            return p
        }
    }

    public func perform(_ request: HTTPRequest, sink: HTTPBodySink) throws(CurlError) -> HTTPResponse {
        let transfer = prepare(request, sink: sink)
        return try finish(transfer, shoal_curl_easy_perform(handle))
    }

    /// Sets the handle up for `request` (not yet run).
    func prepare(_ request: HTTPRequest, sink: HTTPBodySink) -> Transfer {
        shoal_curl_easy_reset(handle)
        errorBuffer[0] = 0
        let context = Context(sink: sink, handle: handle)
        let transfer = Transfer(context: context)
        let contextPointer = Unmanaged.passUnretained(context).toOpaque()
        // Strings handed to curl must outlive the transfer: `transfer` keeps C copies.
        let keep = transfer.keep

        _ = shoal_curl_setopt_ptr(handle, CURLOPT_URL, keep(request.url))
        _ = shoal_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        // Object keys go to the store exactly as given: without this, curl resolves `.` and `..`
        // segments and `x/../y` would read the object `y`.
        _ = shoal_curl_setopt_long(handle, CURLOPT_PATH_AS_IS, 1)
        _ = shoal_curl_setopt_ptr(handle, CURLOPT_ERRORBUFFER, errorBuffer)
        _ = shoal_curl_setopt_long(handle, CURLOPT_BUFFERSIZE, 512 * 1024)
        _ = shoal_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeoutMillis)
        if request.stallTimeoutSeconds > 0 {
            _ = shoal_curl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1024)
            _ = shoal_curl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, request.stallTimeoutSeconds)
        }
        if let total = request.totalTimeoutMillis { _ = shoal_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, total) }
        if sink.deliver != nil {
            _ = shoal_curl_setopt_xferinfo(handle, { ctx, _, _, _, _ in
                Unmanaged<Context>.fromOpaque(ctx!).takeUnretainedValue().sink.cancelled ? 1 : 0
            }, contextPointer)
        }
        _ = shoal_curl_setopt_long(handle, CURLOPT_TCP_NODELAY, 1)
        if CurlEasy.verbose { _ = shoal_curl_setopt_long(handle, CURLOPT_VERBOSE, 1) }
        switch request.method {
        case "GET": break
        case "HEAD": _ = shoal_curl_setopt_long(handle, CURLOPT_NOBODY, 1)
        default: _ = shoal_curl_setopt_ptr(handle, CURLOPT_CUSTOMREQUEST, keep(request.method))
        }
        if let c = request.credentials {
            _ = shoal_curl_setopt_ptr(handle, CURLOPT_USERNAME, keep(c.user))
            _ = shoal_curl_setopt_ptr(handle, CURLOPT_PASSWORD, keep(c.password))
        }
        if let body = request.body {
            let copy = malloc(max(body.count, 1))!
            body.withUnsafeBytes { if $0.count > 0 { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            transfer.bodyCopy = copy
            _ = shoal_curl_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            _ = shoal_curl_setopt_ptr(handle, CURLOPT_POSTFIELDS, copy)
        }
        for h in request.headers { transfer.headerList = shoal_curl_slist_append(transfer.headerList, h) }
        for h in request.lateHeaders?() ?? [] { transfer.headerList = shoal_curl_slist_append(transfer.headerList, h) }
        if let headerList = transfer.headerList { _ = shoal_curl_setopt_ptr(handle, CURLOPT_HTTPHEADER, headerList) }

        _ = shoal_curl_setopt_callback(handle, CURLOPT_WRITEFUNCTION, { data, size, count, ctx in
            let context = Unmanaged<Context>.fromOpaque(ctx!).takeUnretainedValue()
            let n = size * count
            if context.status == nil {
                var status: Int = 0
                _ = shoal_curl_getinfo_long(context.handle, CURLINFO_RESPONSE_CODE, &status)
                context.status = status
            }
            // An error document must not land in (or overflow) the caller's data buffer.
            if let status = context.status, status >= 300 {
                context.sink.appendError(UnsafeRawPointer(data!), n)
                return n
            }
            return context.sink.append(UnsafeRawPointer(data!), n) ? n : 0
        })
        _ = shoal_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, contextPointer)
        _ = shoal_curl_setopt_callback(handle, CURLOPT_HEADERFUNCTION, { data, size, count, ctx in
            let context = Unmanaged<Context>.fromOpaque(ctx!).takeUnretainedValue()
            let n = size * count
            context.header(line: UnsafeRawBufferPointer(start: data, count: n))
            return n
        })
        _ = shoal_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, contextPointer)
        return transfer
    }

    /// The response of a transfer that ended with `rc`.
    func finish(_ transfer: Transfer, _ rc: CURLcode) throws(CurlError) -> HTTPResponse {
        let sink = transfer.context.sink
        if rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && sink.overflowed) && !sink.stopped {
            let detail = String(cString: errorBuffer)
            let base = String(cString: shoal_curl_easy_strerror(rc))
            throw CurlError(code: Int32(rc.rawValue), message: detail.isEmpty ? base : "\(base): \(detail)")
        }
        var status: Int = 0
        _ = shoal_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: transfer.context.headers)
    }
}
