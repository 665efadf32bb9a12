/// Which dataset prefixes are read most, over time, in bounded memory: an hourly bucket each
/// holding a Space-Saving summary of at most `capacity` prefixes (a prefix read more than
/// 1/capacity of a bucket's reads is always in it, and its count is over by at most the count
/// it took over, kept as `error`), for the last `hours` hours. `top(since:)` merges the buckets
/// of a window. Kept across restarts as JSON (`encoded`, `decode`).
public struct HotPrefixes: Sendable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var reads: UInt64
        public var bytes: UInt64
        /// Reads that may belong to the prefixes this one took the place of.
        public var error: UInt64

        public init(name: String, reads: UInt64, bytes: UInt64, error: UInt64 = 0) {
            self.name = name
            self.reads = reads
            self.bytes = bytes
            self.error = error
        }
    }

    struct Bucket: Sendable {
        var hour: Int64
        var entries: [String: Entry] = [:]
    }

    public let capacity: Int
    public let hours: Int
    private var buckets: [Bucket] = []

    public init(capacity: Int = 64, hours: Int = 24 * 7) {
        self.capacity = max(1, capacity)
        self.hours = max(1, hours)
    }

    /// Counts `reads` reads of `bytes` bytes under prefix `name` at `now` (wall-clock seconds).
    public mutating func record(_ name: String, reads: UInt64, bytes: UInt64, now: Double) {
        guard reads > 0 else { return }
        let hour = Int64((now / 3600).rounded(.down))
        do {
            if buckets.last?.hour != hour {
                buckets.append(Bucket(hour: hour))
                buckets.removeAll { $0.hour <= hour - Int64(hours) }
            }
            let i = buckets.count - 1
            if var e = buckets[i].entries[name] {
                e.reads += reads
                e.bytes += bytes
                buckets[i].entries[name] = e
            } else if buckets[i].entries.count < capacity {
                buckets[i].entries[name] = Entry(name: name, reads: reads, bytes: bytes)
            } else {
                // Space-Saving: the least-read prefix gives its place (and its count) to this one.
                let least = buckets[i].entries.values.min { $0.reads < $1.reads || ($0.reads == $1.reads && $0.name < $1.name) }!
                buckets[i].entries.removeValue(forKey: least.name)
                buckets[i].entries[name] = Entry(name: name, reads: least.reads + reads, bytes: bytes, error: least.reads)
            }
        }
    }

    /// The prefixes read most since `since` (wall-clock seconds), most read first, at most `limit`.
    public func top(since: Double, limit: Int) -> [Entry] {
        let first = Int64((since / 3600).rounded(.down))
        var merged: [String: Entry] = [:]
        do {
            for b in buckets where b.hour >= first {
                for e in b.entries.values {
                    var m = merged[e.name] ?? Entry(name: e.name, reads: 0, bytes: 0)
                    m.reads += e.reads
                    m.bytes += e.bytes
                    m.error += e.error
                    merged[e.name] = m
                }
            }
        }
        return Array(merged.values.sorted { $0.reads > $1.reads || ($0.reads == $1.reads && $0.name < $1.name) }.prefix(max(0, limit)))
    }

    /// The summaries as JSON: `{"hot":[{"hour":N,"prefixes":[{"name":...,"reads":N,"bytes":N,"error":N}]}]}`.
    public var encoded: String {
        let q = JSONText.quote
        let items = buckets.map { b in
            "{\"hour\":\(b.hour),\"prefixes\":[" + b.entries.values.sorted { $0.name < $1.name }.map { e in
                "{\"name\":\(q(e.name)),\"reads\":\(e.reads),\"bytes\":\(e.bytes),\"error\":\(e.error)}"
            }.joined(separator: ",") + "]}"
        }
        return "{\"hot\":[\(items.joined(separator: ","))]}\n"
    }

    /// Takes the summaries `encoded` wrote (buckets older than `hours` before `now` are dropped).
    public mutating func decode(_ bytes: [UInt8], now: Double) throws(ShoalError) {
        guard let doc = try? JSON.parse(bytes) as? [String: Any], let list = doc["hot"] as? [Any] else {
            throw ShoalError(.badRequest, "not {\"hot\":[...]}")
        }
        let current = Int64((now / 3600).rounded(.down))
        var out: [Bucket] = []
        for item in list {
            guard let o = item as? [String: Any], let hour = o["hour"] as? Int, let prefixes = o["prefixes"] as? [Any] else {
                throw ShoalError(.badRequest, "a bucket is not {hour, prefixes}")
            }
            var b = Bucket(hour: Int64(hour))
            for p in prefixes.prefix(capacity) {
                guard let e = p as? [String: Any], let name = e["name"] as? String, let reads = e["reads"] as? Int, let bytes = e["bytes"] as? Int,
                      reads >= 0, bytes >= 0 else { throw ShoalError(.badRequest, "a prefix is not {name, reads, bytes, error}") }
                b.entries[name] = Entry(name: name, reads: UInt64(reads), bytes: UInt64(bytes), error: UInt64(max(0, e["error"] as? Int ?? 0)))
            }
            if b.hour > current - Int64(hours) && b.hour <= current { out.append(b) }
        }
        out.sort { $0.hour < $1.hour }
        buckets = out
    }
}
