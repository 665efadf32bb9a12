import ShoalCore

/// One entry of a listing.
public struct ObjectEntry: Sendable, Equatable {
    public var key: String
    public var version: ObjectVersion

    public init(key: String, version: ObjectVersion) {
        self.key = key
        self.version = version
    }
}

/// What a ranged GET brought: the bytes written to the buffer and the object's size in the store.
public struct StoreRead: Sendable, Equatable {
    public var count: Int
    public var objectSize: UInt64

    public init(count: Int, objectSize: UInt64) {
        self.count = count
        self.objectSize = objectSize
    }
}

/// Versions made up from `Last-Modified` for stores that send no ETag: `shoal-lm:` and the
/// header's text. Real ETags are quoted (`"…"` or `W/"…"`), so the two never collide.
public enum LastModifiedVersion {
    public static let prefix = "shoal-lm:"

    public static func etag(lastModified: String) -> String { prefix + lastModified }

    /// The `Last-Modified` text of a made-up version; nil for a real ETag.
    public static func lastModified(of etag: String) -> String? {
        etag.hasPrefix(prefix) ? String(etag.dropFirst(prefix.count)) : nil
    }
}

/// A page of a listing; `continuation` is nil on the last page.
public struct ObjectListing: Sendable {
    public var entries: [ObjectEntry]
    public var continuation: String?
}

/// The capacity layer: where every byte Shoal caches comes from. Errors are `ShoalError`s with
/// `.notFound`, `.accessDenied`, `.preconditionFailed` (the object changed), `.storeUnavailable`
/// (network) or `.timeout`, and a message that names the object and the store.
public protocol ObjectStore: Sendable {
    var name: String { get }
    /// Size and etag of the current version.
    func head(bucket: String, key: String) throws(ShoalError) -> ObjectVersion
    /// Reads up to `length` bytes at `offset` into `buffer` (fewer only where the object ends),
    /// only if the object is still at version `ifMatch` (nil: any version, for benchmarks). The
    /// result says how many bytes came and the object's whole size as the store reports it, so
    /// a caller never takes anyone else's word for where the object ends.
    func get(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String?,
             into buffer: UnsafeMutableRawPointer) throws(ShoalError) -> StoreRead
    /// One page of keys under `prefix`.
    func list(bucket: String, prefix: String, continuation: String?) throws(ShoalError) -> ObjectListing
    func put(bucket: String, key: String, bytes: [UInt8]) throws(ShoalError)
    func delete(bucket: String, key: String) throws(ShoalError)
    func createBucket(_ bucket: String) throws(ShoalError)
}

extension ObjectStore {
    /// Every key under `prefix`, following continuation tokens.
    public func listAll(bucket: String, prefix: String) throws(ShoalError) -> [ObjectEntry] {
        var out: [ObjectEntry] = []
        var token: String?
        repeat {
            let page = try list(bucket: bucket, prefix: prefix, continuation: token)
            out += page.entries
            token = page.continuation
        } while token != nil
        return out
    }

    func describe(_ bucket: String, _ key: String) -> String {
        ObjectRef(store: name, bucket: bucket, key: key).description
    }
}
