/// The query parameters of an admin request (`?prefix=s3%3A%2F%2Fb%2Fp&ttl=1h`).
struct AdminQuery {
    private var values: [String: String] = [:]

    init(_ uri: String) {
        guard let q = uri.firstIndex(of: "?") else { return }
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard let name = parts.first else { continue }
            values[AdminQuery.decode(name)] = parts.count > 1 ? AdminQuery.decode(parts[1]) : ""
        }
    }

    subscript(_ name: String) -> String? { values[name] }

    /// Percent-decoding ('+' is a space); malformed escapes are kept as they are.
    static func decode(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "+") { bytes.append(32); continue }
            if b == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(v)
                it = it.dropFirst(2)
                continue
            }
            bytes.append(b)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
