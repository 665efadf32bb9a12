import ShoalCore
import ShoalSys

/// A pinned object prefix: its blocks are kept through eviction until it is unpinned or expires.
public struct PinRule: Sendable, Equatable {
    public var store: String
    public var bucket: String
    public var prefix: String
    /// When it expires, wall-clock seconds since 1970 (kept across restarts); nil pins until unpinned.
    public var expiresAt: Double?
    /// Bytes under the prefix when it was pinned (what it may hold in the cache).
    public var bytes: UInt64

    public init(store: String, bucket: String, prefix: String, expiresAt: Double?, bytes: UInt64) {
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        self.expiresAt = expiresAt
        self.bytes = bytes
    }

    public var url: String { ObjectRef(store: store, bucket: bucket, key: prefix).description }

    func matches(_ key: BlockKey, now: Double) -> Bool {
        if let expiresAt, now >= expiresAt { return false }
        return key.object.store == store && key.object.bucket == bucket && key.object.key.hasPrefix(prefix)
    }
}

/// The worker's pins. A block is pinned when it is written or read while a rule covers it;
/// eviction keeps a pinned block only while some rule still covers its key. With a file
/// (`persist(to:)`), the rules are kept there and survive a restart, expiring by the wall clock.
public final class PinSet: @unchecked Sendable {
    /// Guards `rules` and `file`: taken on the read path (every cache hit and insert asks
    /// `covers`), so never held across the file's write and syncs.
    private let lock = ConditionLock()
    /// One change at a time, from reading the rules to the new file in place.
    private let changing = ConditionLock()
    private var rules: [PinRule] = []
    private var file: String?

    public init() {}

    /// Adds or replaces the rule for the same prefix.
    public func add(_ rule: PinRule) throws(ShoalError) {
        changing.lock()
        defer { changing.unlock() }
        var next = lock.withLock { rules }
        next.removeAll { $0.store == rule.store && $0.bucket == rule.bucket && $0.prefix == rule.prefix }
        next.append(rule)
        try save(next)
        lock.withLock { rules = next }
    }

    /// Removes the rule for a prefix; false if there was none.
    @discardableResult
    public func remove(store: String, bucket: String, prefix: String) throws(ShoalError) -> Bool {
        changing.lock()
        defer { changing.unlock() }
        let current = lock.withLock { rules }
        var next = current
        next.removeAll { $0.store == store && $0.bucket == bucket && $0.prefix == prefix }
        guard next.count != current.count else { return false }
        try save(next)
        lock.withLock { rules = next }
        return true
    }

    /// Keeps the rules in `path` from now on, starting with the ones it holds (those expired
    /// are dropped). A missing file is no rules. One that does not read or parse (damaged) is
    /// moved aside to `path.damaged` and the worker starts without pins: the returned warning
    /// says so, for the log (pins cost warm-ups, never data). A file that cannot be written is
    /// an error naming it.
    @discardableResult
    public func persist(to path: String) throws(ShoalError) -> String? {
        changing.lock()
        defer { changing.unlock() }
        var loaded: [PinRule] = []
        var warning: String?
        if FileSystem.exists(path) {
            let bytes: [UInt8]
            // A file that cannot be read (permissions, an I/O error) is not damaged: say so and stop.
            do { bytes = try FileSystem.readFile(path) } catch { throw ShoalError(.badRequest, "cannot read the pins file \(path): \(error)") }
            do throws(ShoalError) { loaded = try PinSet.decode(bytes, name: path) } catch let damaged {
                do { try FileSystem.rename(path, path + ".damaged") } catch {
                    throw ShoalError(.badRequest, "\(damaged.message), and it cannot be moved aside to \(path).damaged: \(error)")
                }
                warning = "\(damaged.message); moved it to \(path).damaged and started without pins (pin the prefixes again)"
            }
        }
        let now = wallClockSeconds()
        loaded.removeAll { r in r.expiresAt.map { now >= $0 } ?? false }
        lock.withLock { file = path }
        try save(loaded)
        lock.withLock { rules = loaded }
        return warning
    }

    /// `changing` held: writes `rules` to the file (whole, synced, by a rename), if there is one.
    private func save(_ rules: [PinRule]) throws(ShoalError) {
        guard let file = lock.withLock({ self.file }) else { return }
        let items = rules.map { r in
            "{\"store\":\(JSONText.quote(r.store)),\"bucket\":\(JSONText.quote(r.bucket)),\"prefix\":\(JSONText.quote(r.prefix)),"
                + "\"expiresAt\":\(r.expiresAt.map { formatFixed($0, decimals: 3) } ?? "null"),\"bytes\":\(r.bytes)}"
        }
        let text = "{\"pins\":[\(items.joined(separator: ","))]}\n"
        do { try FileSystem.replaceFile(file, Array(text.utf8)) } catch {
            throw ShoalError(.internal, "cannot write the pins file \(file): \(error)")
        }
    }

    static func decode(_ bytes: [UInt8], name: String) throws(ShoalError) -> [PinRule] {
        guard let doc = try? JSON.parse(bytes) as? [String: Any], let items = doc["pins"] as? [Any] else {
            throw ShoalError(.badRequest, "the pins file \(name) is not {\"pins\":[...]}")
        }
        var out: [PinRule] = []
        for (i, item) in items.enumerated() {
            guard let o = item as? [String: Any], let store = o["store"] as? String, let bucket = o["bucket"] as? String,
                  let prefix = o["prefix"] as? String, let bytes = o["bytes"] as? Int, bytes >= 0 else {
                throw ShoalError(.badRequest, "the pins file \(name): pin \(i) is not {store, bucket, prefix, expiresAt, bytes}")
            }
            let expires: Double?
            switch o["expiresAt"] {
            case let d as Double: expires = d
            case let n as Int: expires = Double(n)
            default: expires = nil
            }
            out.append(PinRule(store: store, bucket: bucket, prefix: prefix, expiresAt: expires, bytes: UInt64(bytes)))
        }
        return out
    }

    /// The rules in force (expired ones are dropped).
    public var active: [PinRule] {
        let now = wallClockSeconds()
        return lock.withLock {
            // Expired rules are left out here, and dropped from the file at the next change.
            rules.filter { r in r.expiresAt.map { now < $0 } ?? true }
        }
    }

    public var pinnedBytes: UInt64 { active.reduce(0) { $0 + $1.bytes } }

    public func covers(_ key: BlockKey) -> Bool {
        let now = wallClockSeconds()
        return lock.withLock { rules.contains { $0.matches(key, now: now) } }
    }

    var isEmpty: Bool { lock.withLock { rules.isEmpty } }
}
