#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalCore
@testable import ShoalObjectStore
import ShoalSys
import ShoalTestSupport
import Synchronization

/// A ranged GET into a new array (exactly the bytes received).
/// `startGet` of object "o" in 4 parts, waited for.
func getInParts(_ store: S3Store, _ bucket: String, offset: UInt64, length: Int, etag: String, size: UInt64,
                into buffer: UnsafeMutableRawPointer) throws -> StoreRead {
    let lock = ConditionLock()
    nonisolated(unsafe) var outcome: Result<StoreRead, ShoalError>?
    store.startGet(bucket: bucket, key: "o", offset: offset, length: length, ifMatch: etag, objectSize: size, into: buffer, parts: 4,
                   progress: { _ in }, done: { result in
                       lock.withLock { outcome = result }
                       lock.broadcast()
                   })
    lock.lock()
    defer { lock.unlock() }
    while outcome == nil { _ = lock.wait() }
    return try outcome!.get()
}

func get(_ store: any ObjectStore, _ bucket: String, _ key: String, offset: UInt64, length: Int, ifMatch: String? = nil) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: length)
    let n = try out.withUnsafeMutableBytes { p in
        try Result { () throws(ShoalError) -> Int in
            try store.get(bucket: bucket, key: key, offset: offset, length: length, ifMatch: ifMatch, into: p.baseAddress!).count
        }.get()
    }
    return Array(out.prefix(n))
}

@Suite struct S3StoreTests {
    @Test func putHeadRangedGetAndIfMatch() throws {
        let fx = try ObjectStoreFixture.get()
        let store = fx.store()
        let bucket = try fx.makeBucket("s3")
        let data = SampleData.bytes(seed: 1, count: 100_000)
        try store.put(bucket: bucket, key: "dir/a b+c.bin", bytes: data)
        let v = try store.head(bucket: bucket, key: "dir/a b+c.bin")
        #expect(v.size == 100_000 && !v.etag.isEmpty)
        let buffer = try get(store, bucket, "dir/a b+c.bin", offset: 5000, length: 1000, ifMatch: v.etag)
        #expect(buffer == Array(data[5000..<6000]))
        #expect {
            try get(store, bucket, "dir/a b+c.bin", offset: 0, length: 10, ifMatch: "\"stale\"")
        } throws: { ($0 as? ShoalError)?.code == .preconditionFailed }
    }

    /// One block in parts on a libcurl multi handle: the same bytes and object size as one GET,
    /// the last (short) block too, and a stale version still refused.
    @Test func aBlockInPartsIsTheSameAsOneGet() throws {
        let fx = try ObjectStoreFixture.get()
        let store = fx.store()
        let bucket = try fx.makeBucket("parts")
        let data = SampleData.bytes(seed: 3, count: (5 << 20) + 12345)
        try store.put(bucket: bucket, key: "o", bytes: data)
        let v = try store.head(bucket: bucket, key: "o")
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        for (offset, length) in [(0, 4 << 20), (4 << 20, (1 << 20) + 12345)] {
            memset(buffer, 0, 4 << 20)
            let got = try getInParts(store, bucket, offset: UInt64(offset), length: length, etag: v.etag, size: UInt64(data.count), into: buffer)
            #expect(got == StoreRead(count: length, objectSize: UInt64(data.count)))
            #expect(Array(UnsafeRawBufferPointer(start: buffer, count: length)) == Array(data[offset..<offset + length]), "block at \(offset)")
        }
        #expect {
            try getInParts(store, bucket, offset: 0, length: 4 << 20, etag: "\"stale\"", size: UInt64(data.count), into: buffer)
        } throws: { ($0 as? ShoalError)?.code == .preconditionFailed }
        // A size that is not the object's: the parts past its end are refused, not padded.
        #expect {
            try getInParts(store, bucket, offset: 4 << 20, length: 4 << 20, etag: v.etag, size: UInt64(data.count), into: buffer)
        } throws: { ($0 as? ShoalError)?.code == .preconditionFailed }
    }

    /// A read past the end is short, and the store (not the caller) says how large the object is.
    @Test func rangedGetSaysTheObjectsSize() throws {
        let fx = try ObjectStoreFixture.get()
        let store = fx.store()
        let bucket = try fx.makeBucket("size")
        let data = SampleData.bytes(seed: 2, count: 100_000)
        try store.put(bucket: bucket, key: "o", bytes: data)
        let v = try store.head(bucket: bucket, key: "o")
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        let got = try store.get(bucket: bucket, key: "o", offset: 90_000, length: 65536, ifMatch: v.etag, into: buffer)
        #expect(got == StoreRead(count: 10_000, objectSize: 100_000))
        #expect(Array(UnsafeRawBufferPointer(start: buffer, count: 10_000)) == Array(data[90_000...]))
    }

    /// `x/../data/fz` is a key of its own on S3: it must reach the store as written, never be
    /// resolved by the HTTP layer into `data/fz` (SeaweedFS refuses such keys with a 400).
    @Test func dotSegmentsReachTheStoreAsWritten() throws {
        let fx = try ObjectStoreFixture.get()
        let store = fx.store()
        let bucket = try fx.makeBucket("dots")
        try store.put(bucket: bucket, key: "data/fz", bytes: SampleData.bytes(seed: 3, count: 1000))
        for key in ["x/../data/fz", "./data/fz", "data/./fz"] {
            #expect(throws: ShoalError.self, "HEAD \(key)") { try store.head(bucket: bucket, key: key) }
            #expect {
                try get(store, bucket, key, offset: 0, length: 1000)
            } throws: {
                let e = $0 as? ShoalError
                return e?.code == .badRequest && e!.message.contains(key)
            }
        }
    }

    /// A store that sends no ETag gets a version from Last-Modified, read back with
    /// If-Unmodified-Since; one that sends neither is refused, never read unversioned.
    @Test func versionsWithoutETags() throws {
        let server = try CannedHTTPServer()
        let store = S3Store(name: "plain", credentials: S3Credentials(endpoint: server.url, accessKey: "a", secretKey: "b"))
        let modified = "Sun, 22 Nov 2026 03:09:00 GMT"
        server.respond("200 OK", headers: ["Last-Modified: \(modified)"], body: [1, 2, 3, 4, 5])
        let v = try store.head(bucket: "bkt", key: "k")
        #expect(v == ObjectVersion(size: 5, etag: "shoal-lm:" + modified))
        server.respond("206 Partial Content", headers: ["Last-Modified: \(modified)", "Content-Range: bytes 1-2/5"], body: [2, 3])
        #expect(try get(store, "bkt", "k", offset: 1, length: 2, ifMatch: v.etag) == [2, 3])
        let request = try #require(server.requests.last)
        #expect(request.contains("If-Unmodified-Since: \(modified)") && !request.contains("If-Match"))
        // The object was rewritten: another Last-Modified is another version.
        server.respond("206 Partial Content", headers: ["Last-Modified: Mon, 23 Nov 2026 00:00:00 GMT", "Content-Range: bytes 1-2/5"], body: [7, 7])
        #expect { try get(store, "bkt", "k", offset: 1, length: 2, ifMatch: v.etag) } throws: { ($0 as? ShoalError)?.code == .preconditionFailed }
        server.respond("200 OK", headers: [], body: [1, 2, 3])
        #expect { try store.head(bucket: "bkt", key: "k") } throws: {
            let e = $0 as? ShoalError
            return e?.code == .preconditionFailed && e!.message.contains("neither an ETag nor a Last-Modified")
        }
        #expect { try get(store, "bkt", "k", offset: 0, length: 2, ifMatch: "") } throws: { ($0 as? ShoalError)?.code == .badRequest }

        // A listing without ETags gives the version a HEAD of the same object gives.
        server.respond("200 OK", headers: [], body: Array("""
            <ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>5</Size>\
            <LastModified>2026-11-22T03:09:00.000Z</LastModified></Contents></ListBucketResult>
            """.utf8))
        #expect(try store.list(bucket: "bkt", prefix: "", continuation: nil).entries == [ObjectEntry(key: "k", version: v)])
    }

    /// ISO 8601 listing dates in HEAD's form, weekday included.
    @Test func listingDatesInHeadsForm() {
        #expect(LastModifiedVersion.httpDate(iso8601: "2026-11-22T03:09:00.000Z") == "Sun, 22 Nov 2026 03:09:00 GMT")
        #expect(LastModifiedVersion.httpDate(iso8601: "2000-02-29T23:59:59Z") == "Tue, 29 Feb 2000 23:59:59 GMT")
        #expect(LastModifiedVersion.httpDate(iso8601: "1970-01-01T00:00:00.000Z") == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(LastModifiedVersion.httpDate(iso8601: "2024-01-01T07:05:03.123Z") == "Mon, 01 Jan 2024 07:05:03 GMT")
        for bad in ["", "2026-11-22", "2026-13-01T00:00:00Z", "2026-11-22 03:09:00Z", "2026-11-22T03:09:00.000"] {
            #expect(LastModifiedVersion.httpDate(iso8601: bad) == nil, "\(bad)")
        }
    }

    /// A version comes from a client; with a line break in it, it once added headers (or a
    /// second request) to the signed GET the worker sent its store.
    @Test func aVersionCannotAddHeadersToTheRequest() throws {
        let server = try CannedHTTPServer()
        let store = S3Store(name: "plain", credentials: S3Credentials(endpoint: server.url, accessKey: "a", secretKey: "b"))
        server.respond("206 Partial Content", headers: ["ETag: \"e\"", "Content-Range: bytes 0-1/5"], body: [1, 2])
        for version in ["\"e\"\r\nX-Injected: 1", "shoal-lm:Sun, 22 Nov 2026 03:09:00 GMT\r\nX-Injected: 1"] {
            #expect { try get(store, "bkt", "k", offset: 0, length: 2, ifMatch: version) } throws: {
                let e = $0 as? ShoalError
                return e?.code == .badRequest && e!.message.contains("control characters")
            }
        }
        #expect(!server.requests.contains { $0.contains("X-Injected") })
    }

    /// A request is signed as its transfer starts, not when it was made: the same request sent
    /// twice carries two signatures, each dated when it went out; the Host signed is the one
    /// sent (without an endpoint's user:password@).
    @Test func requestsAreSignedAsTheyGoOut() throws {
        let server = try CannedHTTPServer()
        let endpoint = "http://u:p@" + server.url.dropFirst("http://".count)
        let store = S3Store(name: "plain", credentials: S3Credentials(endpoint: endpoint, accessKey: "AK", secretKey: "b"))
        server.respond("206 Partial Content", headers: ["ETag: \"e\"", "Content-Range: bytes 0-1/5"], body: [1, 2])
        let before = SigV4.amzDate(unixSeconds: Int64(wallClockSeconds()))
        _ = try get(store, "bkt", "k", offset: 0, length: 2)
        let after = SigV4.amzDate(unixSeconds: Int64(wallClockSeconds()))
        let head = try #require(server.requests.last).lowercased()
        #expect(head.contains("\r\nhost: \(server.endpoint)\r\n".lowercased()))
        let date = try #require(head.split(separator: "\r\n").first { $0.hasPrefix("x-amz-date: ") }).dropFirst(12).uppercased()
        #expect(before <= date && date <= after, "\(date) not between \(before) and \(after)")
        #expect(head.contains("authorization: aws4-hmac-sha256 credential=ak/\(date.prefix(8))/us-east-1/s3/aws4_request, signedheaders=host;x-amz-content-sha256;x-amz-date, signature="))

        // One HTTPRequest, sent twice: its late headers are made at each start.
        let calls = Mutex(0)
        var request = HTTPRequest(method: "GET", url: server.url + "/x")
        request.lateHeaders = { ["X-Late: \(calls.withLock { $0 += 1; return $0 })"] }
        #expect(calls.withLock { $0 } == 0)
        let easy = try CurlEasy()
        for n in 1...2 {
            _ = try easy.perform(request, sink: HTTPBodySink(limit: 16))
            #expect(server.requests.last?.contains("X-Late: \(n)\r\n") == true)
        }

        // A store whose clock differs says so, not "check the access key".
        server.respond("403 Forbidden", headers: ["Content-Type: application/xml"],
                       body: Array("<Error><Code>RequestTimeTooSkewed</Code><Message>The difference is too large.</Message></Error>".utf8))
        #expect { try get(store, "bkt", "k", offset: 0, length: 2) } throws: {
            let e = $0 as? ShoalError
            return e?.code == .accessDenied && e!.message.contains("clock") && !e!.message.contains("access key")
        }
    }

    /// A blocking GET (a warm's fill runs one) is checked as the fetch thread's is: a 206 for
    /// another range is refused. `close` ends one under way when its next bytes come, so a
    /// stopping worker waits on no GET, and refuses the next.
    @Test func aBlockingGetChecksItsRangeAndEndsOnClose() throws {
        let server = try CannedHTTPServer()
        let store = S3Store(name: "plain", credentials: S3Credentials(endpoint: server.url, accessKey: "a", secretKey: "b"))
        server.respond("206 Partial Content", headers: ["ETag: \"e\"", "Content-Range: bytes 0-1/5"], body: [1, 2])
        #expect { try get(store, "bkt", "k", offset: 2, length: 2, ifMatch: "\"e\"") } throws: {
            let e = $0 as? ShoalError
            return e?.code == .internal && e!.message.contains("without the range asked for")
        }
        let size = 1 << 20
        server.respond("206 Partial Content", headers: ["ETag: \"e\"", "Content-Range: bytes 0-\(size - 1)/\(size)"], body: SampleData.bytes(seed: 5, count: size))
        server.hold(after: 64 << 10)
        let lock = ConditionLock()
        nonisolated(unsafe) var outcome: Result<[UInt8], any Error>?
        try OSThread.spawn(name: "get") {
            let r = Result { try get(store, "bkt", "k", offset: 0, length: size, ifMatch: "\"e\"") }
            lock.withLock { outcome = r }
            lock.broadcast()
        }
        usleep(300_000)
        #expect(lock.withLock { outcome == nil }, "the GET ended while its body was held")
        store.close()
        server.release()
        lock.lock()
        while outcome == nil { _ = lock.wait() }
        lock.unlock()
        #expect { try outcome!.get() } throws: {
            let e = $0 as? ShoalError
            return e?.code == .storeUnavailable && e!.message.contains("closed")
        }
        #expect { try get(store, "bkt", "k", offset: 0, length: 2, ifMatch: "\"e\"") } throws: { ($0 as? ShoalError)?.code == .storeUnavailable }
    }

    /// 400 and 405 are the store refusing the request, not an internal error of Shoal's.
    @Test func refusedRequestsAreBadRequests() throws {
        let server = try CannedHTTPServer()
        let store = S3Store(name: "picky", credentials: S3Credentials(endpoint: server.url, accessKey: "a", secretKey: "b"))
        for status in ["400 Bad Request", "405 Method Not Allowed"] {
            server.respond(status, headers: [], body: Array("<Error><Code>Nope</Code></Error>".utf8))
            #expect { try get(store, "bkt", "k", offset: 0, length: 2, ifMatch: "\"e\"") } throws: {
                let e = $0 as? ShoalError
                return e?.code == .badRequest && e!.message.contains("picky") && e!.message.contains("Nope")
            }
        }
    }

    @Test func missingObjectNamesIt() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("missing")
        #expect {
            try fx.store().head(bucket: bucket, key: "no/such.bin")
        } throws: {
            let e = $0 as? ShoalError
            return e?.code == .notFound && e!.message.contains("s3://\(bucket)/no/such.bin")
        }
    }

    @Test func wrongSecretIsAccessDeniedWithTheStoresMessage() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("denied")
        try fx.store().put(bucket: bucket, key: "k", bytes: [1, 2, 3])
        let bad = fx.store(secretKey: "wrong-secret")
        #expect {
            try get(bad, bucket, "k", offset: 0, length: 3)
        } throws: {
            let e = $0 as? ShoalError
            return e?.code == .accessDenied && e!.message.contains("SignatureDoesNotMatch")
        }
    }

    /// Requests are signed here (SigV4) over the path and query as sent: names that must be
    /// percent-encoded, in the path and in a listing's prefix, are accepted by the store's check.
    @Test func namesThatNeedEncodingAreSignedAsSent() throws {
        let fx = try ObjectStoreFixture.get()
        let store = fx.store()
        let bucket = try fx.makeBucket("enc")
        let key = "ds/é n=1&k?%20/ü+x~.bin"
        let data = SampleData.bytes(seed: 5, count: 3000)
        try store.put(bucket: bucket, key: key, bytes: data)
        let v = try store.head(bucket: bucket, key: key)
        #expect(v.size == 3000)
        #expect(try get(store, bucket, key, offset: 100, length: 50, ifMatch: v.etag) == Array(data[100..<150]))
        #expect(try store.listAll(bucket: bucket, prefix: "ds/é n=1&k?%20/").map(\.key) == [key])
        try store.delete(bucket: bucket, key: key)
        #expect(throws: ShoalError.self) { try store.head(bucket: bucket, key: key) }
    }

    @Test func listingFollowsContinuationTokens() throws {
        let fx = try ObjectStoreFixture.get()
        let bucket = try fx.makeBucket("list")
        let store = fx.store()
        for i in 0..<7 { try store.put(bucket: bucket, key: "p/\(i)", bytes: [UInt8(i)]) }
        try store.put(bucket: bucket, key: "other", bytes: [9])
        let paged = S3Store(name: "default", credentials: fx.credentials, listPageSize: 3)
        let first = try paged.list(bucket: bucket, prefix: "p/", continuation: nil)
        #expect(first.entries.count == 3 && first.continuation != nil)
        let all = try paged.listAll(bucket: bucket, prefix: "p/")
        #expect(all.map(\.key) == (0..<7).map { "p/\($0)" })
        #expect(all.allSatisfy { $0.version.size == 1 })
        // A listing's versions are the ones a HEAD gives (SeaweedFS writes the ETag's quotes as
        // &#34;), so an object opened at a listed version reads.
        for e in all { #expect(try store.head(bucket: bucket, key: e.key) == e.version) }
    }

    @Test func xmlEntitiesAreUnescapedOnce() {
        #expect(S3Store.unescapeXML("&#34;ab&#x22; &lt;&amp;&gt; &quot;&apos;") == "\"ab\" <&> \"'")
        #expect(S3Store.unescapeXML("&amp;quot;") == "&quot;")
        #expect(S3Store.unescapeXML("a & b &bogus; &#xZZ; &") == "a & b &bogus; &#xZZ; &")
    }

    @Test func unreachableEndpointIsAStoreError() {
        let dead = S3Store(name: "dead", credentials: S3Credentials(endpoint: "http://127.0.0.1:9", accessKey: "a", secretKey: "b"))
        #expect { try dead.head(bucket: "b", key: "k") } throws: {
            let e = $0 as? ShoalError
            return e?.code == .storeUnavailable && e!.message.contains("dead")
        }
    }
}

@Suite struct FileStoreTests {
    @Test func behavesLikeAStore() throws {
        let dir = makeTemporaryDirectory("files")
        let store = FileStore(name: "local", root: dir)
        try store.createBucket("b")
        try store.put(bucket: "b", key: "x/y.bin", bytes: [1, 2, 3, 4])
        let v = try store.head(bucket: "b", key: "x/y.bin")
        #expect(v.size == 4)
        #expect(try get(store, "b", "x/y.bin", offset: 1, length: 2, ifMatch: v.etag) == [2, 3])
        // Past the end: short, with the file's size.
        var buffer = [UInt8](repeating: 0, count: 8)
        let got = try buffer.withUnsafeMutableBytes { p in
            try Result { () throws(ShoalError) -> StoreRead in
                try store.get(bucket: "b", key: "x/y.bin", offset: 2, length: 8, ifMatch: v.etag, into: p.baseAddress!)
            }.get()
        }
        #expect(got == StoreRead(count: 2, objectSize: 4) && buffer.prefix(2) == [3, 4])
        #expect(try store.listAll(bucket: "b", prefix: "x/").map(\.key) == ["x/y.bin"])
        #expect(throws: ShoalError.self) { try store.head(bucket: "b", key: "../escape") }
        #expect { try store.head(bucket: "b", key: "none") } throws: { ($0 as? ShoalError)?.code == .notFound }
    }
}
