import ShoalCore
import ShoalSys

/// A pinned object prefix: its blocks are kept through eviction until it is unpinned or expires.
public struct PinRule: Sendable, Equatable {
    public var store: String
    public var bucket: String
    public var prefix: String
    /// Monotonic deadline in nanoseconds; nil pins until unpinned.
    public var expiresAt: UInt64?
    /// Bytes under the prefix when it was pinned (what it may hold in the cache).
    public var bytes: UInt64

    public init(store: String, bucket: String, prefix: String, expiresAt: UInt64?, bytes: UInt64) {
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        self.expiresAt = expiresAt
        self.bytes = bytes
    }

    public var url: String { ObjectRef(store: store, bucket: bucket, key: prefix).description }

    func matches(_ key: BlockKey, now: UInt64) -> Bool {
        if let expiresAt, now >= expiresAt { return false }
        return key.object.store == store && key.object.bucket == bucket && key.object.key.hasPrefix(prefix)
    }
}

/// The worker's pins. A block is pinned when it is written or read while a rule covers it;
/// eviction keeps a pinned block only while some rule still covers its key.
public final class PinSet: @unchecked Sendable {
    private let lock = ConditionLock()
    private var rules: [PinRule] = []

    public init() {}

    /// Adds or replaces the rule for the same prefix.
    public func add(_ rule: PinRule) {
        lock.withLock {
            rules.removeAll { $0.store == rule.store && $0.bucket == rule.bucket && $0.prefix == rule.prefix }
            rules.append(rule)
        }
    }

    /// Removes the rule for a prefix; false if there was none.
    @discardableResult
    public func remove(store: String, bucket: String, prefix: String) -> Bool {
        lock.withLock {
            let before = rules.count
            rules.removeAll { $0.store == store && $0.bucket == bucket && $0.prefix == prefix }
            return rules.count != before
        }
    }

    /// The rules in force (expired ones are dropped).
    public var active: [PinRule] {
        let now = monotonicNanos()
        return lock.withLock {
            rules.removeAll { r in r.expiresAt.map { now >= $0 } ?? false }
            return rules
        }
    }

    public var pinnedBytes: UInt64 { active.reduce(0) { $0 + $1.bytes } }

    public func covers(_ key: BlockKey) -> Bool {
        let now = monotonicNanos()
        return lock.withLock { rules.contains { $0.matches(key, now: now) } }
    }

    var isEmpty: Bool { lock.withLock { rules.isEmpty } }
}
