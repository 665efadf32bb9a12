import ShoalCore
import ShoalSys
import Synchronization

/// Connection details of an S3-compatible endpoint.
public struct S3Credentials: Sendable {
    public var endpoint: String
    public var region: String
    public var accessKey: String
    public var secretKey: String

    public init(endpoint: String, region: String = "us-east-1", accessKey: String, secretKey: String) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.region = region
        self.accessKey = accessKey
        self.secretKey = secretKey
    }
}

/// An S3-compatible store over libcurl, signed with SigV4, path-style URLs. Easy handles are
/// pooled so connections are reused; at most `maxConcurrency` requests run at once.
public final class S3Store: ObjectStore, @unchecked Sendable {
    public let name: String
    public let credentials: S3Credentials
    private let maxConcurrency: Int
    /// Keys per listing page (S3's max-keys); the store may cap it lower.
    public let listPageSize: Int
    private let lock = ConditionLock()
    private var idle: [CurlEasy] = []
    private var inFlight = 0
    /// Connect limit and stall limit (seconds under 1 KiB/s) of every request.
    private let connectTimeoutMillis: Int
    private let stallTimeoutSeconds: Int
    /// The thread that runs `startGet`'s transfers (started on the first one).
    private var fetchLoop: CurlMultiLoop?
    private var closed = false
    /// The bodies of blocking GETs under way, which `close` cancels.
    private var gets: [ObjectIdentifier: HTTPBodySink] = [:]
    /// The endpoint's `host[:port]` (the Host header, signed) and the path before the bucket.
    private let host: String
    private let basePath: String
    /// Today's SigV4 key (it changes at midnight UTC).
    private let dayKey = Mutex<SigV4.SigningKey?>(nil)

    public init(name: String, credentials: S3Credentials, maxConcurrency: Int = 16, listPageSize: Int = 1000,
                connectTimeoutMillis: Int = HTTPRequest.defaultConnectTimeoutMillis,
                stallTimeoutSeconds: Int = HTTPRequest.defaultStallTimeoutSeconds) {
        self.connectTimeoutMillis = max(1, connectTimeoutMillis)
        self.stallTimeoutSeconds = max(1, stallTimeoutSeconds)
        self.listPageSize = max(1, min(listPageSize, 1000))
        self.name = name
        self.credentials = credentials
        self.maxConcurrency = max(1, maxConcurrency)
        let afterScheme = credentials.endpoint.range(of: "://").map { credentials.endpoint[$0.upperBound...] } ?? Substring(credentials.endpoint)
        let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
        // The Host header is the authority without any user:password@ in front.
        let authority = afterScheme[..<slash]
        host = String(authority.lastIndex(of: "@").map { authority[authority.index(after: $0)...] } ?? authority)
        basePath = String(afterScheme[slash...])
    }

    // MARK: requests

    /// Runs `body` on a pooled handle, at most `maxConcurrency` at once. A `cancellable` sink is
    /// one `close` may cancel (a GET's); once closed, no more of those start.
    private func withHandle<T>(cancellable sink: HTTPBodySink?, _ body: (CurlEasy) throws(ShoalError) -> T) throws(ShoalError) -> T {
        lock.lock()
        while inFlight >= maxConcurrency { lock.wait() }
        if let sink {
            guard !closed else {
                lock.unlock()
                throw closedError
            }
            gets[ObjectIdentifier(sink)] = sink
        }
        inFlight += 1
        let handle = idle.popLast()
        lock.unlock()
        var easy = handle
        defer {
            lock.lock()
            inFlight -= 1
            if let easy { idle.append(easy) }
            if let sink { gets[ObjectIdentifier(sink)] = nil }
            lock.unlock()
            lock.signal()
        }
        if easy == nil {
            do { easy = try CurlEasy() } catch { throw ShoalError(.internal, "cannot create a curl handle: \(error)") }
        }
        return try body(easy!)
    }

    /// A request, signed (SigV4) as its transfer starts: a request may wait for a handle or
    /// behind other fills, and S3 refuses a signature dated over 15 minutes before it arrives.
    /// Headers added to it go unsigned, which S3 allows for all but `x-amz-*` ones.
    private func request(_ method: String, bucket: String, key: String?, query: [(String, String)] = [],
                         payloadHash: String = SigV4.emptyPayloadHash) -> HTTPRequest {
        var resource = "/" + PercentEncoding.encode(bucket, keepSlash: false)
        if let key { resource += "/" + PercentEncoding.encode(key, keepSlash: true) }
        // SigV4 signs the query sorted by name, as it is sent.
        let queryText = query.sorted { $0.0 < $1.0 }.map { "\($0.0)=\(PercentEncoding.encode($0.1, keepSlash: false))" }.joined(separator: "&")
        var r = HTTPRequest(method: method, url: credentials.endpoint + resource + (queryText.isEmpty ? "" : "?" + queryText))
        let path = basePath + resource  // as the store sees it, after the endpoint's own path
        r.headers.append("Host: \(host)")
        r.lateHeaders = { [self] in
            let amzDate = SigV4.amzDate(unixSeconds: Int64(wallClockSeconds()))
            return SigV4.sign(method: method, host: host, path: path, query: queryText, payloadHash: payloadHash, amzDate: amzDate,
                              key: signingKey(for: amzDate), accessKey: credentials.accessKey).map { "\($0.name): \($0.value)" }
        }
        r.connectTimeoutMillis = connectTimeoutMillis
        r.stallTimeoutSeconds = stallTimeoutSeconds
        return r
    }

    /// The signing key of `amzDate`'s day, kept until the day changes.
    private func signingKey(for amzDate: String) -> SigV4.SigningKey {
        dayKey.withLock { (cached: inout SigV4.SigningKey?) -> SigV4.SigningKey in
            let day = String(amzDate.prefix(8))
            if let cached, cached.day == day { return cached }
            let fresh = SigV4.SigningKey(secretKey: credentials.secretKey, day: day, region: credentials.region)
            cached = fresh
            return fresh
        }
    }

    private func perform(_ req: HTTPRequest, sink: HTTPBodySink, what: String, cancellable: Bool = false) throws(ShoalError) -> HTTPResponse {
        let response = try withHandle(cancellable: cancellable ? sink : nil) { (easy) throws(ShoalError) -> HTTPResponse in
            do throws(CurlError) {
                return try easy.perform(req, sink: sink)
            } catch {
                throw transportFailure(error, what: what)
            }
        }
        // Cancelled by `close`: the worker is stopping.
        guard !(cancellable && sink.stopped) else { throw closedError }
        return response
    }

    private func transportFailure(_ error: CurlError, what: String) -> ShoalError {
        if error.isTimeout { return ShoalError(.timeout, "store '\(name)' timed out on \(what): \(error.message)") }
        return ShoalError(.storeUnavailable, "store '\(name)' at \(credentials.endpoint) is unreachable on \(what): \(error.message)")
    }

    private func failure(_ response: HTTPResponse, body: String, what: String) -> ShoalError {
        let code = S3Store.xmlValue(body, "Code") ?? ""
        let message = S3Store.xmlValue(body, "Message") ?? ""
        let detail = [code, message].filter { !$0.isEmpty }.joined(separator: ": ")
        let suffix = detail.isEmpty ? "HTTP \(response.status)" : "HTTP \(response.status) \(detail)"
        switch response.status {
        case 400:
            return ShoalError(.badRequest, "store '\(name)' refused the request for \(what) as invalid (\(suffix))")
        case 404:
            return ShoalError(.notFound, "\(what) not found (\(suffix))")
        case 405:
            return ShoalError(.badRequest, "store '\(name)' does not allow this request on \(what) (\(suffix))")
        case 403 where code == "RequestTimeTooSkewed":
            return ShoalError(.accessDenied, "store '\(name)' refused \(what): this machine's clock and the store's differ by more than its limit (\(suffix)); check the clocks")
        case 401, 403:
            return ShoalError(.accessDenied, "access denied to \(what) by store '\(name)' (\(suffix)); check its access key and secret")
        case 412:
            return ShoalError(.preconditionFailed, "\(what) changed while being read (\(suffix))")
        case 416:
            return ShoalError(.preconditionFailed, "\(what) is shorter than expected: it changed (\(suffix))")
        case 500...599:
            return ShoalError(.storeUnavailable, "store '\(name)' failed on \(what) (\(suffix))")
        default:
            return ShoalError(.internal, "store '\(name)' answered \(what) with \(suffix)")
        }
    }

    // MARK: ObjectStore

    public func head(bucket: String, key: String) throws(ShoalError) -> ObjectVersion {
        let what = describe(bucket, key)
        let sink = HTTPBodySink(limit: 0)
        let response = try perform(request("HEAD", bucket: bucket, key: key), sink: sink, what: what)
        guard response.status == 200 else { throw failure(response, body: "", what: what) }
        guard let lengthText = response.headers["content-length"], let size = UInt64(lengthText) else {
            throw ShoalError(.internal, "store '\(name)' gave no Content-Length for \(what)")
        }
        return ObjectVersion(size: size, etag: try version(response, what: what))
    }

    /// The object's version from a response: its ETag, or one made from `Last-Modified` (with the
    /// size beside it in every block key). A store that sends neither cannot be cached safely.
    private func version(_ response: HTTPResponse, what: String) throws(ShoalError) -> String {
        if let etag = response.headers["etag"], !etag.isEmpty { return etag }
        if let modified = response.headers["last-modified"], !modified.isEmpty {
            return LastModifiedVersion.etag(lastModified: modified)
        }
        throw ShoalError(.preconditionFailed, "store '\(name)' sent neither an ETag nor a Last-Modified for \(what), so its versions cannot be told apart; Shoal does not cache unversioned objects")
    }

    public func get(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String?,
                    into buffer: UnsafeMutableRawPointer) throws(ShoalError) -> StoreRead {
        let what = describe(bucket, key)
        guard length > 0 else { return StoreRead(count: 0, objectSize: 0) }
        let req = try rangedRequest(bucket: bucket, key: key, offset: offset, length: length, ifMatch: ifMatch, what: what)
        let sink = HTTPBodySink(buffer: UnsafeMutableRawBufferPointer(start: buffer, count: length))
        let response = try perform(req, sink: sink, what: what, cancellable: true)
        return try checked(response, sink: sink, offset: offset, length: length, ifMatch: ifMatch, what: what)
    }

    private var closedError: ShoalError { ShoalError(.storeUnavailable, "store '\(name)' is closed: the worker is stopping") }

    /// A ranged GET as up to `parts` GETs at once (split on 4 KiB boundaries: one block filled
    /// by several connections, for when few blocks are missing and one GET's speed would bound
    /// the fill), on this store's fetch thread (one libcurl multi handle for all of them),
    /// without waiting; see `ObjectStore.startGet`. A part's bytes are reported only once its
    /// response head is checked: its status, the version it names, its range, and the object's
    /// size; when it ends it is checked as a whole GET is, and all parts must name one size.
    public func startGet(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String, objectSize: UInt64,
                         into buffer: UnsafeMutableRawPointer, parts: Int,
                         progress: @escaping @Sendable (Int) -> Void, done: @escaping @Sendable (Result<StoreRead, ShoalError>) -> Void) {
        let what = describe(bucket, key)
        let loop: CurlMultiLoop
        var ranges: [(start: Int, count: Int)] = []
        var requests: [HTTPRequest] = []
        do throws(ShoalError) {
            guard length > 0 else { throw ShoalError(.internal, "an empty read of \(what)") }
            loop = try startedLoop()
            let n = max(1, min(parts, maxConcurrency, length / (256 * 1024)))
            // Parts on 4 KiB boundaries, the last one takes the rest.
            let step = (length / n + 4095) & ~4095
            var at = 0
            while at < length {
                ranges.append((at, min(step, length - at)))
                at += step
            }
            for r in ranges {
                requests.append(try rangedRequest(bucket: bucket, key: key, offset: offset + UInt64(r.start), length: r.count, ifMatch: ifMatch, what: what))
            }
        } catch {
            done(.failure(error))
            return
        }
        let state = PartedRead(ranges.map(\.count))
        for (i, r) in ranges.enumerated() {
            let sink = HTTPBodySink(buffer: UnsafeMutableRawBufferPointer(start: buffer + r.start, count: r.count))
            let partOffset = offset + UInt64(r.start)
            let transfer = CurlTransfer(request: requests[i], sink: sink, progress: { [self] t in
                state.lock.lock()
                defer { state.lock.unlock() }
                guard state.error == nil else { return false }
                if !state.headChecked[i] {
                    do throws(ShoalError) {
                        let size = try checkedHead(t.response, offset: partOffset, length: r.count, ifMatch: ifMatch, what: what)
                        guard size == objectSize else {
                            throw ShoalError(.preconditionFailed, "\(what) has \(size) bytes in the store where version \(ifMatch) has \(objectSize): it changed")
                        }
                        state.headChecked[i] = true
                    } catch {
                        state.error = error
                        return false
                    }
                }
                state.got[i] = t.sink.count
                let prefix = state.prefix
                if prefix > state.reported {
                    state.reported = prefix
                    progress(prefix)
                }
                return true
            }, done: { [self] result in
                // Normally on the fetch thread; a part refused by a stopping loop ends on this one.
                state.lock.lock()
                defer { state.lock.unlock() }
                do throws(ShoalError) {
                    let response: HTTPResponse
                    switch result {
                    case .success(let got): response = got
                    case .failure(let error): throw state.error ?? transportFailure(error, what: what)
                    }
                    let part = try checked(response, sink: sink, offset: partOffset, length: r.count, ifMatch: ifMatch, what: what)
                    if let size = state.size, size != part.objectSize {
                        throw ShoalError(.preconditionFailed, "\(what) changed while being read (its size went from \(size) to \(part.objectSize) bytes)")
                    }
                    state.size = part.objectSize
                    state.total += part.count
                } catch {
                    if state.error == nil { state.error = error }
                }
                state.remaining -= 1
                guard state.remaining == 0 else { return }
                if let error = state.error {
                    done(.failure(error))
                } else {
                    done(.success(StoreRead(count: state.total, objectSize: state.size ?? 0)))
                }
            })
            loop.add(transfer)
        }
    }

    /// Ends every transfer: the fetch thread's at once, blocking GETs as their next bytes come.
    public func close() {
        let (loop, running) = lock.withLock { () -> (CurlMultiLoop?, [HTTPBodySink]) in
            closed = true
            defer { fetchLoop = nil }
            return (fetchLoop, Array(gets.values))
        }
        running.forEach { $0.cancel() }
        loop?.stop()
    }

    private func startedLoop() throws(ShoalError) -> CurlMultiLoop {
        lock.lock()
        defer { lock.unlock() }
        if let fetchLoop { return fetchLoop }
        guard !closed else { throw closedError }
        do {
            let loop = try CurlMultiLoop(name: "shoal-fetch", maxTransfers: maxConcurrency)
            fetchLoop = loop
            return loop
        } catch {
            throw ShoalError(.internal, "cannot start the fetch thread of store '\(name)': \(error)")
        }
    }

    /// What a ranged GET's head says before its body is taken: the object's size in the store,
    /// once the status is a success, the version is `ifMatch` and the range is the one asked for.
    private func checkedHead(_ response: HTTPResponse, offset: UInt64, length: Int, ifMatch: String, what: String) throws(ShoalError) -> UInt64 {
        guard response.status == 206 || response.status == 200 else {
            throw ShoalError(.internal, "store '\(name)' answered \(what) with HTTP \(response.status)")
        }
        let answered = try version(response, what: what)
        guard answered == ifMatch else {
            throw ShoalError(.preconditionFailed, "\(what) changed while being read (version \(answered), expected \(ifMatch))")
        }
        if response.status == 206 {
            guard let range = response.headers["content-range"], let total = S3Store.contentRangeTotal(range),
                  S3Store.contentRangeStart(range) == offset
            else {
                throw ShoalError(.internal, "store '\(name)' answered a ranged GET of \(what) without the range asked for")
            }
            return total
        }
        guard offset == 0, let size = response.headers["content-length"].flatMap({ UInt64($0) }), size <= UInt64(length) else {
            throw ShoalError(.internal, "store '\(name)' ignored the byte range for \(what)")
        }
        return size
    }

    /// A ranged GET of `length` bytes at `offset`, conditional on the version when one is named.
    private func rangedRequest(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String?, what: String) throws(ShoalError) -> HTTPRequest {
        if let ifMatch, ifMatch.isEmpty {
            throw ShoalError(.badRequest, "a versioned read of \(what) names an empty version")
        }
        // It goes into a request header: a line break there would add headers of its own.
        if let ifMatch, ObjectVersion.hasControlCharacters(ifMatch) {
            throw ShoalError(.badRequest, "a versioned read of \(what) names a version with control characters")
        }
        var req = request("GET", bucket: bucket, key: key)
        req.headers.append("Range: bytes=\(offset)-\(offset + UInt64(length) - 1)")
        let lastModified = ifMatch.flatMap(LastModifiedVersion.lastModified(of:))
        if let lastModified {
            req.headers.append("If-Unmodified-Since: \(lastModified)")
        } else if let ifMatch {
            req.headers.append("If-Match: \(ifMatch)")
        }
        return req
    }

    /// Checks a ranged GET's answer: its status, its version, that the range was honoured, that
    /// no more bytes came than asked for, and that the count fits the object's size.
    private func checked(_ response: HTTPResponse, sink: HTTPBodySink, offset: UInt64, length: Int, ifMatch: String?,
                         what: String) throws(ShoalError) -> StoreRead {
        guard response.status == 206 || response.status == 200 else {
            throw failure(response, body: sink.text, what: what)
        }
        // The store enforces the condition; the version it answers with is checked as well, so a
        // store that ignores conditions still never mixes versions.
        if let ifMatch {
            let answered = try version(response, what: what)
            guard answered == ifMatch else {
                throw ShoalError(.preconditionFailed, "\(what) changed while being read (version \(answered), expected \(ifMatch))")
            }
        }
        if response.status == 200 && offset != 0 {
            throw ShoalError(.internal, "store '\(name)' ignored the byte range for \(what)")
        }
        guard !sink.overflowed else {
            throw ShoalError(.preconditionFailed, "\(what) returned more bytes than the \(length) asked for")
        }
        let objectSize: UInt64
        if response.status == 206 {
            guard let range = response.headers["content-range"], let total = S3Store.contentRangeTotal(range) else {
                throw ShoalError(.internal, "store '\(name)' answered a ranged GET of \(what) without a Content-Range total")
            }
            guard S3Store.contentRangeStart(range) == offset else {
                throw ShoalError(.internal, "store '\(name)' answered a ranged GET of \(what) without the range asked for")
            }
            objectSize = total
        } else {
            objectSize = UInt64(sink.count)
        }
        let expected = offset < objectSize ? Int(min(UInt64(length), objectSize - offset)) : 0
        guard sink.count == expected else {
            throw ShoalError(.preconditionFailed, "\(what) returned \(sink.count) bytes at \(offset) where \(expected) were expected for an object of \(objectSize) bytes: it changed")
        }
        return StoreRead(count: sink.count, objectSize: objectSize)
    }

    /// The start of `bytes START-END/TOTAL`.
    static func contentRangeStart(_ header: String) -> UInt64? {
        var text = Substring(header.trimmingSpaces())
        guard text.hasPrefix("bytes ") else { return nil }
        text = text.dropFirst(6)
        guard let dash = text.firstIndex(of: "-") else { return nil }
        return UInt64(text[..<dash])
    }

    /// The total of `bytes START-END/TOTAL`; nil if absent or `*`.
    static func contentRangeTotal(_ header: String) -> UInt64? {
        guard let slash = header.lastIndex(of: "/") else { return nil }
        return UInt64(header[header.index(after: slash)...].trimmingSpaces())
    }

    public func list(bucket: String, prefix: String, continuation: String?) throws(ShoalError) -> ObjectListing {
        var query = [("list-type", "2"), ("prefix", prefix), ("max-keys", String(listPageSize))]
        if let continuation { query.append(("continuation-token", continuation)) }
        let what = "listing of s3://\(bucket)/\(prefix)"
        let sink = HTTPBodySink(limit: 64 << 20)
        let response = try perform(request("GET", bucket: bucket, key: nil, query: query), sink: sink, what: what)
        let body = String(decoding: sink.bytes, as: UTF8.self)
        guard response.status == 200 else { throw failure(response, body: body, what: what) }
        var entries: [ObjectEntry] = []
        var rest = Substring(body)
        while let start = rest.range(of: "<Contents>"), let end = rest.range(of: "</Contents>", range: start.upperBound..<rest.endIndex) {
            let item = String(rest[start.upperBound..<end.lowerBound])
            if let key = S3Store.xmlValue(item, "Key") {
                let size = UInt64(S3Store.xmlValue(item, "Size") ?? "0") ?? 0
                var etag = S3Store.xmlValue(item, "ETag") ?? ""
                // No ETag: the same made-up version a HEAD gives, so a listing can be used as it is.
                if etag.isEmpty, let modified = S3Store.xmlValue(item, "LastModified").flatMap(LastModifiedVersion.httpDate(iso8601:)) {
                    etag = LastModifiedVersion.etag(lastModified: modified)
                }
                entries.append(ObjectEntry(key: key, version: ObjectVersion(size: size, etag: etag)))
            }
            rest = rest[end.upperBound...]
        }
        let truncated = S3Store.xmlValue(body, "IsTruncated") == "true"
        return ObjectListing(entries: entries, continuation: truncated ? S3Store.xmlValue(body, "NextContinuationToken") : nil)
    }

    public func put(bucket: String, key: String, bytes: [UInt8]) throws(ShoalError) {
        let what = describe(bucket, key)
        var req = request("PUT", bucket: bucket, key: key, payloadHash: SigV4.unsignedPayload)
        req.body = bytes
        req.headers.append("Content-Type: application/octet-stream")
        let sink = HTTPBodySink(limit: 1 << 20)
        let response = try perform(req, sink: sink, what: what)
        guard response.status == 200 else { throw failure(response, body: sink.text, what: what) }
    }

    public func delete(bucket: String, key: String) throws(ShoalError) {
        let what = describe(bucket, key)
        let sink = HTTPBodySink(limit: 1 << 20)
        let response = try perform(request("DELETE", bucket: bucket, key: key), sink: sink, what: what)
        guard response.status == 204 || response.status == 200 else { throw failure(response, body: sink.text, what: what) }
    }

    public func createBucket(_ bucket: String) throws(ShoalError) {
        let what = "bucket \(bucket)"
        let req = request("PUT", bucket: bucket, key: nil)
        let sink = HTTPBodySink(limit: 1 << 20)
        let response = try perform(req, sink: sink, what: what)
        if response.status == 200 { return }
        if response.status == 409, sink.text.contains("BucketAlreadyOwnedByYou") || sink.text.contains("BucketAlreadyExists") { return }
        throw failure(response, body: sink.text, what: what)
    }

    // MARK: helpers

    /// The text of the first `<tag>` element, with XML entities decoded.
    static func xmlValue(_ xml: String, _ tag: String) -> String? {
        guard let open = xml.range(of: "<\(tag)>"), let close = xml.range(of: "</\(tag)>", range: open.upperBound..<xml.endIndex)
        else { return nil }
        return unescapeXML(String(xml[open.upperBound..<close.lowerBound]))
    }

    /// XML's five named entities and numeric references (`&#34;`, `&#x22;`: SeaweedFS writes
    /// an ETag's quotes so), in one pass, so `&amp;quot;` stays `&quot;`.
    static func unescapeXML(_ text: String) -> String {
        guard text.contains("&") else { return text }
        var out = ""
        var rest = Substring(text)
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].prefix(12).firstIndex(of: ";") else {
                out += rest[amp...]
                return out
            }
            let name = rest[rest.index(after: amp)..<semi]
            var scalar: Unicode.Scalar?
            switch name {
            case "quot": scalar = "\""
            case "apos": scalar = "'"
            case "lt": scalar = "<"
            case "gt": scalar = ">"
            case "amp": scalar = "&"
            default:
                if name.hasPrefix("#x") || name.hasPrefix("#X") {
                    scalar = UInt32(name.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                } else if name.hasPrefix("#") {
                    scalar = UInt32(name.dropFirst()).flatMap(Unicode.Scalar.init)
                }
            }
            if let scalar {
                out.unicodeScalars.append(scalar)
            } else {
                out += rest[amp...semi]
            }
            rest = rest[rest.index(after: semi)...]
        }
        return out + rest
    }
}

extension String {
    func range(of needle: String, range: Range<String.Index>? = nil) -> Range<String.Index>? {
        Substring(self).range(of: needle, range: range)
    }

    func replacingAll(_ needle: String, with replacement: String) -> String {
        guard !needle.isEmpty, range(of: needle) != nil else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: needle) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

extension Substring {
    func range(of needle: String, range: Range<String.Index>? = nil) -> Range<String.Index>? {
        let hay = range.map { self[$0] } ?? self[...]
        let n = Array(needle.utf8)
        guard !n.isEmpty else { return nil }
        let u = hay.utf8
        var i = u.startIndex
        while i != u.endIndex {
            if u[i] == n[0] {
                var j = i
                var k = 0
                while k < n.count, j != u.endIndex, u[j] == n[k] { j = u.index(after: j); k += 1 }
                if k == n.count { return i..<j }
            }
            i = u.index(after: i)
        }
        return nil
    }
}

/// The parts of one `startGet`, as its transfers report them (under `lock`).
private final class PartedRead: @unchecked Sendable {
    let lock = ConditionLock()
    let counts: [Int]
    var got: [Int]
    var headChecked: [Bool]
    var reported = 0
    var remaining: Int
    var error: ShoalError?
    var size: UInt64?
    var total = 0

    init(_ counts: [Int]) {
        self.counts = counts
        got = Array(repeating: 0, count: counts.count)
        headChecked = Array(repeating: false, count: counts.count)
        remaining = counts.count
    }

    /// Bytes in place from the start, through checked parts only.
    var prefix: Int {
        var n = 0
        for i in counts.indices {
            guard headChecked[i] else { break }
            n += got[i]
            if got[i] < counts[i] { break }
        }
        return n
    }
}
