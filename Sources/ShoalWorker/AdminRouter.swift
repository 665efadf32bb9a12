import Foundation
import ShoalCore

/// An admin request as a handler sees it.
struct AdminCall {
    let method: String
    let path: String
    let query: AdminQuery

    /// A required query parameter; its absence names it.
    func require(_ name: String, example: String) throws(ShoalError) -> String {
        guard let v = query[name] else { throw ShoalError(.badRequest, "\(method) \(path) needs ?\(name)=\(example)") }
        return v
    }
}

/// The admin port's routes: a typed handler per method and path. A JSON handler returns a value
/// whose `Encodable` form is the body; a text handler returns its text. An unknown path is 404
/// naming the pages, a known one asked with another method 405 naming those it takes, and a
/// handler's `ShoalError` its status (not_found 404, too_large 507, bad_request 400, else 500)
/// with its message as the body.
struct AdminRouter: Sendable {
    typealias Handler = @Sendable (AdminCall) throws(ShoalError) -> AdminResponse

    private var routes: [String: [(method: String, handler: Handler)]] = [:]
    private var paths: [String] = []

    mutating func add(_ method: String, _ path: String, _ handler: @escaping Handler) {
        if routes[path] == nil { paths.append(path) }
        routes[path, default: []].append((method, handler))
    }

    mutating func json<T: Encodable & SendableMetatype>(_ method: String, _ path: String, _ body: @escaping @Sendable (AdminCall) throws(ShoalError) -> T) {
        add(method, path) { call throws(ShoalError) in
            AdminResponse(status: 200, contentType: "application/json", body: try AdminRouter.encode(try body(call)) + "\n")
        }
    }

    mutating func text(_ method: String, _ path: String, contentType: String = "text/plain", _ body: @escaping @Sendable (AdminCall) throws(ShoalError) -> String) {
        add(method, path) { call throws(ShoalError) in AdminResponse(status: 200, contentType: contentType, body: try body(call)) }
    }

    func route(method: String, uri: String) -> AdminResponse {
        let path = uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri
        guard let handlers = routes[path] else {
            return AdminResponse(status: 404, contentType: "text/plain", body: "no such page: \(path) (try \(paths.joined(separator: ", ")))\n")
        }
        guard let handler = handlers.first(where: { $0.method == method })?.handler else {
            let allowed = handlers.map(\.method)
            return AdminResponse(status: 405, contentType: "text/plain", body: "\(path) takes \(allowed.joined(separator: ", "))\n")
        }
        do {
            return try handler(AdminCall(method: method, path: path, query: AdminQuery(uri)))
        } catch {
            let status = switch error.code {
            case .notFound: 404
            case .tooLarge: 507
            case .badRequest: 400
            default: 500
            }
            return AdminResponse(status: status, contentType: "text/plain", body: error.message + "\n")
        }
    }

    static func encode<T: Encodable>(_ value: T) throws(ShoalError) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do { return String(decoding: try encoder.encode(value), as: UTF8.self) } catch {
            throw ShoalError(.internal, "could not encode the answer: \(error)")
        }
    }
}

// MARK: The admin port's bodies

/// `/pins`: the room pins may take and each pin.
struct PinsBody: Encodable {
    struct Pin: Encodable {
        var prefix: String
        var bytes: UInt64
        /// Seconds until it expires; null: pinned until unpinned.
        var secondsLeft: Int?

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(prefix, forKey: .prefix)
            try c.encode(bytes, forKey: .bytes)
            try c.encode(secondsLeft, forKey: .secondsLeft)  // null, not left out
        }

        enum CodingKeys: String, CodingKey { case prefix, bytes, secondsLeft }
    }

    var pinnable: UInt64
    var pins: [Pin]
}

/// `POST /evict`: what was dropped.
struct EvictBody: Encodable {
    var prefix: String
    var objects: Int
    var blocks: Int
    var bytes: UInt64
}

/// `/hot`: the prefixes read most over the window, with what this worker holds of each.
struct HotBody: Encodable {
    struct Prefix: Encodable {
        var prefix: String
        var reads: UInt64
        var bytesRead: UInt64
        /// Reads that may belong to prefixes this one took the place of (Space-Saving's bound).
        var error: UInt64
        var bytesCached: UInt64
    }

    var sinceSeconds: Int
    var prefixes: [Prefix]
}

/// `/status`: the worker's state.
struct StatusBody: Encodable {
    struct Admission: Encodable {
        var admitted: UInt64
        var refusedFirstMiss: UInt64
        var refusedWriteBudget: UInt64
        var refusedThrashGuard: UInt64
        var writeBudgetUsed: Double
    }

    struct MemoryTier: Encodable {
        var pages: Int
        var resident: Int
        var residentBytes: Int
        var pagesMoved: UInt64
        var hits: UInt64
        var misses: UInt64
        var loads: UInt64
        var evictions: UInt64
    }

    struct Member: Encodable {
        var id: String
        var address: String
        var state: String
        var weight: Double
    }

    struct Cluster: Encodable {
        var source: String
        var memberID: String
        var epoch: UInt64
        var members: [Member]
        var viewError: String?
        var registrationError: String?

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(source, forKey: .source)
            try c.encode(memberID, forKey: .memberID)
            try c.encode(epoch, forKey: .epoch)
            try c.encode(members, forKey: .members)
            try c.encode(viewError, forKey: .viewError)  // null when there is none
            try c.encode(registrationError, forKey: .registrationError)
        }

        enum CodingKeys: String, CodingKey { case source, memberID, epoch, members, viewError, registrationError }
    }

    struct Disk: Encodable {
        var path: String
        var inService: Bool
        var failure: String?
        var blocks: Int
        var capacity: UInt64
        var hits: UInt64
        var misses: UInt64
        var evictions: UInt64
        var reinserted: UInt64
        var corruptBlocks: UInt64
        var bytesWritten: UInt64
        var indexBytes: Int
    }

    struct Dataset: Encodable {
        var dataset: String
        var hits: UInt64
        var misses: UInt64
        var hitRatio: Double
        var bytesServed: UInt64
        var bytesFilled: UInt64
        var blocks: Int
        var bytesCached: UInt64
        var evictions: UInt64
    }

    var listen: String
    var blocks: Int
    var bytesCached: UInt64
    var capacity: UInt64
    var connections: Int
    var fillsInFlight: Int
    var serveFromMemory: Bool
    var answerWithoutData: Bool
    var admission: Admission
    var memoryTier: MemoryTier?
    var cluster: Cluster?
    var disks: [Disk]
    var datasets: [Dataset]
}
