/// An object prefix: `s3://bucket/prefix` or `s3://store@bucket/prefix` (the prefix may be empty).
public struct ObjectPrefix: Sendable, Equatable, CustomStringConvertible {
    public var store: String
    public var bucket: String
    public var prefix: String

    public init(store: String = ObjectRef.defaultStore, bucket: String, prefix: String) {
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
    }

    public static func parse(_ url: String) throws(ShoalError) -> ObjectPrefix {
        guard url.hasPrefix("s3://") else { throw ShoalError(.badRequest, "'\(url)' is not an s3:// prefix (s3://bucket/prefix)") }
        let rest = url.dropFirst(5)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var bucket = String(rest[..<slash])
        let prefix = slash == rest.endIndex ? "" : String(rest[rest.index(after: slash)...])
        var store = ObjectRef.defaultStore
        if let at = bucket.firstIndex(of: "@") {
            store = String(bucket[..<at])
            bucket = String(bucket[bucket.index(after: at)...])
        }
        guard !bucket.isEmpty, !store.isEmpty else { throw ShoalError(.badRequest, "'\(url)' names no bucket") }
        return ObjectPrefix(store: store, bucket: bucket, prefix: prefix)
    }

    public var description: String { ObjectRef(store: store, bucket: bucket, key: prefix).description }
}

/// Percent-encoding of all but RFC 3986's unreserved characters (as SigV4 and URLs expect).
public enum PercentEncoding {
    public static func encode(_ s: String, keepSlash: Bool = false) -> String {
        let hex = Array("0123456789ABCDEF")
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out.append("%")
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xf)])
            }
        }
        return out
    }
}
