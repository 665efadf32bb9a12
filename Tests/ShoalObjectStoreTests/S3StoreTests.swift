import Testing
import ShoalCore
@testable import ShoalObjectStore
import ShoalSys
import ShoalTestSupport

/// A ranged GET into a new array (exactly the bytes received).
func get(_ store: any ObjectStore, _ bucket: String, _ key: String, offset: UInt64, length: Int, ifMatch: String? = nil) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: length)
    let n = try out.withUnsafeMutableBytes { p in
        try Result { () throws(ShoalError) -> Int in
            try store.get(bucket: bucket, key: key, offset: offset, length: length, ifMatch: ifMatch, into: p.baseAddress!)
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
        #expect(try store.listAll(bucket: "b", prefix: "x/").map(\.key) == ["x/y.bin"])
        #expect(throws: ShoalError.self) { try store.head(bucket: "b", key: "../escape") }
        #expect { try store.head(bucket: "b", key: "none") } throws: { ($0 as? ShoalError)?.code == .notFound }
    }
}
