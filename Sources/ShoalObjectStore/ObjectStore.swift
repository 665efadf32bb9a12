import ShoalCore

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

    /// A listing's `LastModified` (ISO 8601, `2026-11-22T03:09:00.000Z`) in the form HEAD sends
    /// (`Sun, 22 Nov 2026 03:09:00 GMT`), so a version made from a listing is the one a HEAD of
    /// the same object makes. nil if it does not parse.
    public static func httpDate(iso8601 text: String) -> String? {
        let digits = Array(text.utf8)
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= digits.count else { return nil }
            var n = 0
            for c in digits[from..<(from + count)] {
                guard c >= 48, c <= 57 else { return nil }
                n = n * 10 + Int(c - 48)
            }
            return n
        }
        guard digits.count >= 19, digits[4] == UInt8(ascii: "-"), digits[7] == UInt8(ascii: "-"), digits[10] == UInt8(ascii: "T"),
              digits[13] == UInt8(ascii: ":"), digits[16] == UInt8(ascii: ":"), digits.last == UInt8(ascii: "Z"),
              let y = number(0, 4), let m = number(5, 2), let d = number(8, 2), let hh = number(11, 2), let mm = number(14, 2),
              let ss = number(17, 2), (1...12).contains(m), (1...31).contains(d), hh < 24, mm < 60, ss < 61
        else { return nil }
        // Days since 1970-01-01 (a Thursday), by the civil-calendar formula.
        let yy = m <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
        let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let weekday = weekdays[((days + 4) % 7 + 7) % 7]
        return "\(weekday), \(two(d)) \(months[m - 1]) \(y) \(two(hh)):\(two(mm)):\(two(ss)) GMT"
    }
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
    /// The same read, started without waiting, as up to `parts` ranged GETs at once (a store
    /// without that does one). `progress` is called with how
    /// many bytes from the buffer's start are in place, from a response that names version
    /// `ifMatch` and an object of `objectSize` bytes (bytes of any other answer are never
    /// reported); `done` is called once with the outcome, checked as `get`'s is. Both may run on
    /// another thread, and before this returns.
    func startGet(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String, objectSize: UInt64,
                  into buffer: UnsafeMutableRawPointer, parts: Int,
                  progress: @escaping @Sendable (Int) -> Void, done: @escaping @Sendable (Result<StoreRead, ShoalError>) -> Void)
    /// Stops what the store runs in the background (its transfers end with an error).
    func close()
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

extension ObjectStore {
    /// A store without transfers of its own reads at once, on the caller's thread.
    public func startGet(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String, objectSize: UInt64,
                         into buffer: UnsafeMutableRawPointer, parts: Int,
                         progress: @escaping @Sendable (Int) -> Void, done: @escaping @Sendable (Result<StoreRead, ShoalError>) -> Void) {
        let result = Result { () throws(ShoalError) -> StoreRead in
            try get(bucket: bucket, key: key, offset: offset, length: length, ifMatch: ifMatch, into: buffer)
        }
        if case .success(let got) = result, got.objectSize == objectSize { progress(got.count) }
        done(result)
    }

    public func close() {}
}
