/// Who may do what on a worker's admin port, as pure checks on a request's method and headers
/// (tested without a socket). Reads (`GET`) are open to any client that names the worker in its
/// `Host`; changes (`POST`, `DELETE`) also need the admin token and, from a browser, the admin's
/// own origin. A web page on the same host can make a browser send requests to the port: a
/// foreign `Host` (DNS rebinding) or `Origin` is refused, and it cannot know the token.
public struct AdminAccess: Sendable {
    /// What to do with a request.
    public enum Decision: Sendable, Equatable {
        case allow
        /// The HTTP status and a body saying what was wrong and what to do.
        case refuse(status: Int, message: String)
    }

    /// The label the admin token is derived with.
    public static let tokenLabel = "shoal-admin-v1"

    /// The token mutating requests carry as `Authorization: Bearer <token>`: the hex
    /// HMAC-SHA256 of the label under the cluster secret.
    public static func token(secret: [UInt8]) -> String {
        hmacSHA256(key: secret, message: Array(tokenLabel.utf8)).hexString
    }

    private let token: [UInt8]
    /// Host names and addresses (lower case, no port) a request's `Host` may name.
    public let hosts: Set<String>
    public let port: Int

    /// `hosts`: the listener's address and the host's names; loopback names are always added.
    public init(secret: [UInt8], port: Int, hosts: [String]) {
        token = Array(AdminAccess.token(secret: secret).utf8)
        self.port = port
        var all: Set<String> = ["localhost", "127.0.0.1", "::1"]
        for h in hosts where !h.isEmpty && h != "0.0.0.0" && h != "::" { all.insert(h.lowercased()) }
        self.hosts = all
    }

    /// The host part of a `Host` header or an origin's authority (`name`, `name:port`, `[v6]:port`).
    static func hostPart(_ authority: Substring) -> String {
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return String(authority) }
            return authority[authority.index(after: authority.startIndex)..<close].lowercased()
        }
        if let colon = authority.lastIndex(of: ":") { return authority[..<colon].lowercased() }
        return authority.lowercased()
    }

    /// `localAddress` is the address the connection came in on (always acceptable as `Host`).
    public func check(method: String, path: String, host: String?, origin: String?, authorization: String?,
                      localAddress: String? = nil) -> Decision {
        let own = localAddress.map { hosts.union([$0.lowercased()]) } ?? hosts
        let example = "http://127.0.0.1:\(port)"
        if let host {
            let name = AdminAccess.hostPart(Substring(host.trimmingSpaces()))
            guard own.contains(name) else {
                return .refuse(status: 421, message: "Host '\(host)' is not this worker's admin address (use \(example), a loopback name or this host's name); "
                               + "other names are refused so a web page cannot reach the admin port through a name it controls")
            }
        }
        guard method != "GET" && method != "HEAD" else { return .allow }
        if let origin {
            let trimmed = origin.trimmingSpaces()
            var ok = false
            if trimmed.hasPrefix("http://") {
                let authority = trimmed.dropFirst("http://".count)
                let portText = authority.hasSuffix("]") || !authority.contains(":") ? "80" : String(authority[authority.index(after: authority.lastIndex(of: ":")!)...])
                ok = own.contains(AdminAccess.hostPart(authority)) && Int(portText) == port
            }
            guard ok else {
                return .refuse(status: 403, message: "\(method) \(path) from origin '\(origin)' refused: requests from web pages may not change the worker; "
                               + "use shoal pin/unpin or a client that sends no Origin header")
            }
        }
        let bearer = "Bearer "
        guard let authorization, authorization.hasPrefix(bearer),
              constantTimeEqual(Array(authorization.dropFirst(bearer.count).trimmingSpaces().lowercased().utf8), token) else {
            return .refuse(status: 401, message: "\(method) \(path) needs the admin token: send 'Authorization: Bearer <hex HMAC-SHA256(cluster secret, \"\(AdminAccess.tokenLabel)\")>'; "
                           + "shoal pin/unpin send it from the secret file (--secret-file or SHOAL_SECRET_FILE)")
        }
        return .allow
    }
}
