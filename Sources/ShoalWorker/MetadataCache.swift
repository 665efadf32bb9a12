import ShoalCore
import ShoalSys

/// Object metadata (size, etag) with a TTL. A TTL of 0 revalidates on every STAT.
final class MetadataCache: @unchecked Sendable {
    private let ttlNanos: UInt64
    private let lock = ConditionLock()
    private var entries: [ObjectRef: (ObjectVersion, UInt64)] = [:]
    private let maxEntries = 1_000_000

    init(ttlSeconds: Double) {
        ttlNanos = UInt64(ttlSeconds * 1e9)
    }

    func get(_ ref: ObjectRef) -> ObjectVersion? {
        guard ttlNanos > 0 else { return nil }
        let now = monotonicNanos()
        return lock.withLock {
            guard let (v, expires) = entries[ref], expires > now else { return nil }
            return v
        }
    }

    func put(_ ref: ObjectRef, _ v: ObjectVersion) {
        guard ttlNanos > 0 else { return }
        let expires = monotonicNanos() + ttlNanos
        lock.withLock {
            if entries.count >= maxEntries { entries.removeAll(keepingCapacity: true) }
            entries[ref] = (v, expires)
        }
    }

    func invalidate(_ ref: ObjectRef) { lock.withLock { entries[ref] = nil } }
}
