import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalWorker

/// Where the workers' admin ports are.
struct AdminOptions: ParsableArguments {
    @Option(name: .customLong("admin"), help: "A worker's admin host:port (repeat for several; default: $SHOAL_ADMINS, comma-separated).")
    var admins: [String] = []

    @Option(help: "File holding the cluster secret (default: $SHOAL_SECRET_FILE); changes carry a token derived from it.")
    var secretFile: String?

    /// The admin token, from the cluster secret (`Authorization: Bearer ...`).
    func token() throws -> String {
        guard let path = secretFile ?? ClientSettings.processEnvironment("SHOAL_SECRET_FILE") else {
            throw fail("no cluster secret: pass --secret-file FILE or set SHOAL_SECRET_FILE (a worker accepts changes only with a token derived from it)", code: 2)
        }
        do { return AdminAccess.token(secret: try SettingsFile.readSecret(path)) } catch { throw fail(error.message, code: 2) }
    }

    func endpoints() throws -> [Endpoint] {
        var list = admins
        if list.isEmpty, let a = ClientSettings.processEnvironment("SHOAL_ADMINS") { list = a.split(separator: ",").map(String.init) }
        guard !list.isEmpty else { throw fail("no admin address: pass --admin HOST:PORT or set SHOAL_ADMINS", code: 2) }
        var out: [Endpoint] = []
        for a in list {
            guard let e = Endpoint(a.trimmingCharacters()) else { throw fail("admin address '\(a)' is not host:port", code: 2) }
            out.append(e)
        }
        return out
    }

    /// Sends one request to every worker; prints each answer (unless `quiet`: errors only);
    /// fails if any worker refused.
    func send(_ method: String, _ pathAndQuery: String, quiet: Bool = false) throws {
        var failed = 0
        let authorization = "Authorization: Bearer \(try token())"
        for e in try endpoints() {
            let easy: CurlEasy
            do { easy = try CurlEasy() } catch { throw fail("cannot start an HTTP client: \(error)") }
            let sink = HTTPBodySink(limit: 1 << 20)
            do {
                var request = HTTPRequest(method: method, url: "http://\(e)\(pathAndQuery)")
                request.headers = [authorization]
                let r = try easy.perform(request, sink: sink)
                // Error answers are kept apart from the body (HTTPBodySink.text has either).
                let body = sink.text.trimmingCharacters(in: "\n").trimmingCharacters()
                if r.status == 200 {
                    if !quiet { print("\(e): \(body)") }
                } else {
                    note("shoal: error: worker \(e): \(body.isEmpty ? "HTTP \(r.status)" : body)")
                    failed += 1
                }
            } catch {
                note("shoal: error: worker \(e) admin port unreachable: \(error)")
                failed += 1
            }
        }
        if failed > 0 { throw ExitCode(1) }
    }
}


struct PinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pin", abstract: "Keep an object prefix's cached blocks through eviction (on every worker given).")

    @Argument(help: "s3://bucket/prefix (or s3://store@bucket/prefix)") var prefix: String
    @Option(help: "Unpin by itself after this long, e.g. 12h.") var ttl: String?
    @OptionGroup var admin: AdminOptions

    func run() throws {
        guard prefix.hasPrefix("s3://") else { throw fail("'\(prefix)' is not s3://bucket/prefix", code: 2) }
        if let ttl, DurationText.parseSeconds(ttl) == nil { throw fail("--ttl '\(ttl)' is not a duration (e.g. 12h)", code: 2) }
        try admin.send("POST", "/pins?prefix=\(PercentEncoding.encode(prefix))" + (ttl.map { "&ttl=\(PercentEncoding.encode($0))" } ?? ""))
    }
}

struct UnpinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unpin", abstract: "Remove a pin.")

    @Argument(help: "s3://bucket/prefix, as pinned") var prefix: String
    @OptionGroup var admin: AdminOptions

    func run() throws {
        try admin.send("DELETE", "/pins?prefix=\(PercentEncoding.encode(prefix))")
    }
}

struct EvictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evict",
        abstract: "Drop the cached blocks of the objects under a prefix, pinned or not, on every worker given (a later read fills them again).")

    @Argument(help: "s3://bucket/prefix (or s3://store@bucket/prefix)") var prefix: String
    @OptionGroup var admin: AdminOptions

    func run() throws {
        do { _ = try ObjectPrefix.parse(prefix) } catch { throw fail(error.message, code: 2) }
        try admin.send("POST", "/evict?prefix=\(PercentEncoding.encode(prefix))")
    }
}
