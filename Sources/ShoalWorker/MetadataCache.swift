import ShoalCore
import ShoalSys

/// Object metadata (size, etag) with a TTL. A TTL of 0 revalidates on every STAT. Versions stay
/// known past their TTL as the last version seen, which a worker may serve while the store is
/// unreachable (`serveStaleOnOutage`).
final class MetadataCache: @unchecked Sendable {
    private struct Entry {
        var version: ObjectVersion
        var expires: UInt64
    }

    private let ttlNanos: UInt64
    private let lock = ConditionLock()
    private var entries: [ObjectRef: Entry] = [:]
    /// When each object was last reported as served stale, to log it once per interval.
    private var staleReported: [ObjectRef: UInt64] = [:]
    private let maxEntries = 1_000_000

    init(ttlSeconds: Double) {
        ttlNanos = UInt64(max(0, ttlSeconds) * 1e9)
    }

    /// The version seen within the TTL, if any.
    func get(_ ref: ObjectRef) -> ObjectVersion? {
        guard ttlNanos > 0 else { return nil }
        let now = monotonicNanos()
        return lock.withLock {
            guard let e = entries[ref], e.expires > now else { return nil }
            return e.version
        }
    }

    /// The last version seen, however old.
    func lastKnown(_ ref: ObjectRef) -> ObjectVersion? {
        lock.withLock { entries[ref]?.version }
    }

    func put(_ ref: ObjectRef, _ v: ObjectVersion) {
        let expires = monotonicNanos() + ttlNanos
        lock.withLock {
            if entries.count >= maxEntries { entries.removeAll(keepingCapacity: true) }
            entries[ref] = Entry(version: v, expires: expires)
        }
    }

    func invalidate(_ ref: ObjectRef) { lock.withLock { entries[ref] = nil } }

    /// True at most once per `intervalNanos` for each object: whether to log that it is served stale.
    func shouldReportStale(_ ref: ObjectRef, intervalNanos: UInt64) -> Bool {
        let now = monotonicNanos()
        return lock.withLock {
            if let last = staleReported[ref], elapsedNanos(from: last, to: now) < intervalNanos { return false }
            if staleReported.count >= 10_000 { staleReported.removeAll(keepingCapacity: true) }
            staleReported[ref] = now
            return true
        }
    }
}
