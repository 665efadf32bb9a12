/// AWS Signature Version 4, header form, for S3 requests.
///
/// The signing key depends only on the day, the region and the service, so a store keeps it for
/// the day (`SigV4.SigningKey`) and a request costs one SHA-256 of its canonical form and one
/// HMAC. (libcurl's CURLOPT_AWS_SIGV4 derived the key again, four HMACs through OpenSSL contexts
/// made and freed, and parsed its own settings, on every request: on a 100 KiB GET that was about
/// a tenth of a worker's CPU.)
public enum SigV4 {
    /// x-amz-content-sha256 of a request without a body: SHA-256 of nothing.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// x-amz-content-sha256 of a request whose body is not signed.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"

    /// The key of one day, region and service (kDate → kRegion → kService → kSigning).
    public struct SigningKey: Sendable, Equatable {
        /// `YYYYMMDD`.
        public let day: String
        public let region: String
        public let service: String
        let key: [UInt8]

        public init(secretKey: String, day: String, region: String, service: String = "s3") {
            self.day = day
            self.region = region
            self.service = service
            var k = hmacSHA256(key: Array("AWS4\(secretKey)".utf8), message: Array(day.utf8))
            k = hmacSHA256(key: k, message: Array(region.utf8))
            k = hmacSHA256(key: k, message: Array(service.utf8))
            key = hmacSHA256(key: k, message: Array("aws4_request".utf8))
        }

        var scope: String { "\(day)/\(region)/\(service)/aws4_request" }
    }

    /// `YYYYMMDDTHHMMSSZ` (x-amz-date) of a time in seconds since 1970, UTC.
    public static func amzDate(unixSeconds: Int64) -> String {
        let days = unixSeconds >= 0 ? unixSeconds / 86_400 : (unixSeconds - 86_399) / 86_400
        let secondOfDay = Int(unixSeconds - days * 86_400)
        let (year, month, day) = civilDate(daysSince1970: days)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : String(n) }
        let y = String(year)
        return String(repeating: "0", count: max(0, 4 - y.count)) + y + two(month) + two(day)
            + "T" + two(secondOfDay / 3600) + two(secondOfDay / 60 % 60) + two(secondOfDay % 60) + "Z"
    }

    /// The proleptic Gregorian date of a day count (Howard Hinnant's days-to-civil).
    static func civilDate(daysSince1970 days: Int64) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (Int(yoe + era * 400 + (m <= 2 ? 1 : 0)), Int(m), Int(d))
    }

    /// The headers that sign a request: `x-amz-date`, `x-amz-content-sha256` and `Authorization`,
    /// to be sent with the request's other headers. Signed are `host`, those two, and `extra`
    /// (lower-case names; S3 needs every `x-amz-*` header a request carries signed).
    /// - `path`: the path as sent, already percent-encoded (S3 does not encode it again).
    /// - `query`: the query as sent: `name=value` pairs, encoded, sorted by name, joined by `&`.
    /// - `amzDate`: `amzDate(unixSeconds:)` of now; its day must be `key.day`.
    public static func sign(method: String, host: String, path: String, query: String, payloadHash: String,
                            amzDate: String, key: SigningKey, accessKey: String,
                            extra: [(name: String, value: String)] = []) -> [(name: String, value: String)] {
        var headers = extra.map { (name: $0.name, value: trimmed($0.value)) }
        headers.append(("host", host))
        headers.append(("x-amz-content-sha256", payloadHash))
        headers.append(("x-amz-date", amzDate))
        headers.sort { $0.name < $1.name }
        var canonical = "\(method)\n\(path.isEmpty ? "/" : path)\n\(query)\n"
        for h in headers { canonical += "\(h.name):\(h.value)\n" }
        let signedHeaders = headers.map(\.name).joined(separator: ";")
        canonical += "\n\(signedHeaders)\n\(payloadHash)"
        let stringToSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(key.scope)\n\(SHA256.hash(Array(canonical.utf8)).hexString)"
        let signature = hmacSHA256(key: key.key, message: Array(stringToSign.utf8)).hexString
        return [
            ("x-amz-date", amzDate),
            ("x-amz-content-sha256", payloadHash),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(key.scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"),
        ]
    }

    /// A header value as signed: no spaces around it, runs of spaces inside made one.
    static func trimmed(_ value: String) -> String {
        var out = ""
        var space = false
        for c in value.unicodeScalars {
            if c == " " || c == "\t" {
                space = !out.isEmpty
                continue
            }
            if space { out.unicodeScalars.append(" ") }
            space = false
            out.unicodeScalars.append(c)
        }
        return out
    }
}
