import ShoalCore
import ShoalSys

/// How a warm runs (`Warmer`).
public struct WarmOptions: Sendable {
    /// Fills (store GETs) at once across the cluster: the warm lanes of `ShoalClient.warm`.
    public var concurrency = 64
    /// Bytes per second a warm may make each store send the cluster (nil: no cap). Blocks already
    /// cached cost nothing against it.
    public var bytesPerSecondPerStore: UInt64?
    /// Only find out what is cached (`--check`): probes, no fill.
    public var checkOnly = false
    /// Tries of a block whose failure may pass (the store or a worker unreachable, a timeout),
    /// with a backoff doubling from `retryBackoffSeconds`.
    public var attempts = 4
    public var retryBackoffSeconds = 0.25

    public init() {}
}

/// One object of a warm, and how it went.
public struct WarmedObject: Sendable {
    public let file: ShoalFile
    /// Blocks not answered yet.
    var blocksLeft: Int
    /// Blocks fetched from the store (or a previous owner) for this warm.
    public internal(set) var blocksFilled = 0
    /// Bytes of its blocks found cached (a check), or cached now (a warm).
    public internal(set) var bytesResident: UInt64 = 0
    /// The first of its blocks that failed, and why.
    public internal(set) var failure: ShoalError?

    public var url: String { file.object.description }
    public var isDone: Bool { blocksLeft == 0 }
}

/// A warm's counts, as it goes and at its end.
public struct WarmProgress: Sendable {
    /// Objects listed so far (all of them, once listing is over), and their bytes.
    public var objectsTotal = 0
    public var bytesTotal: UInt64 = 0
    public var listing = true
    /// Objects whose every block was answered, and their bytes.
    public var objectsDone = 0
    public var bytesDone: UInt64 = 0
    /// Of those: cached by this warm (at least one block fetched), cached already, failed.
    public var objectsNewlyCached = 0
    public var bytesNewlyCached: UInt64 = 0
    public var objectsAlreadyCached = 0
    public var bytesAlreadyCached: UInt64 = 0
    public var objectsFailed = 0
    /// A check: objects all of whose blocks are cached, and the bytes of the cached blocks.
    public var objectsResident = 0
    public var bytesResident: UInt64 = 0
    /// Blocks fetched from the store, and from previous owners, for this warm.
    public var blocksFromStore = 0
    public var blocksFromPeers = 0
    /// Block requests tried again after a failure that may pass.
    public var retries = 0
    public var seconds = 0.0
    /// Seconds the listing took (the fills came after it); 0 while listing.
    public var listingSeconds = 0.0

    public init() {}

    /// Bytes done per second so far.
    public var bytesPerSecond: Double { seconds > 0 ? Double(bytesDone) / seconds : 0 }

    /// Seconds left at the rate so far (nil: unknown).
    public var etaSeconds: Double? {
        guard !listing, bytesPerSecond > 0 else { return nil }
        return Double(bytesTotal - min(bytesTotal, bytesDone)) / bytesPerSecond
    }
}

/// What a warm found and did.
public struct WarmSummary: Sendable {
    public var progress: WarmProgress
    /// Every object, in listing order.
    public var objects: [WarmedObject]
    /// Prefixes under which nothing was listed.
    public var emptyPrefixes: [ObjectPrefix]
    /// Prefixes whose listing failed, and why.
    public var listingFailures: [(prefix: ObjectPrefix, error: ShoalError)]

    public var failed: [WarmedObject] { objects.filter { $0.failure != nil } }
    public var succeeded: Bool { failed.isEmpty && emptyPrefixes.isEmpty && listingFailures.isEmpty }
}

/// Loads datasets into the cluster: lists each prefix through a worker (the listing's sizes
/// and etags are the versions warmed, no HEAD per object), then asks each block's owner whether
/// it holds the block (a probe: the index answers) and sends the owners of the missing ones a
/// fill-only READ: the owner fetches the block from the store once (however many warms ask,
/// its fill is shared) and answers without data. Nothing but requests and small answers
/// crosses to the machine running the warm.
public final class Warmer {
    let client: ShoalClient
    let options: WarmOptions
    private var buckets: [String: TokenBucket] = [:]

    public init(client: ShoalClient, options: WarmOptions) {
        self.client = client
        self.options = options
    }

    /// Warms (or checks) everything under `prefixes`; `progress` is called after each step.
    public func run(_ prefixes: [ObjectPrefix], progress: (WarmProgress) -> Void) throws(ShoalError) -> WarmSummary {
        let start = monotonicNanos()
        var p = WarmProgress()
        var objects: [WarmedObject] = []
        var empty: [ObjectPrefix] = []
        var listingFailures: [(ObjectPrefix, ShoalError)] = []
        var seen = Set<ObjectRef>()
        /// Tells `progress` where `q` stands (a chunk in progress tells it with its own `p`).
        func report(_ q: inout WarmProgress) {
            q.seconds = Double(elapsedNanos(from: start, to: monotonicNanos())) / 1e9
            progress(q)
        }
        func tick() { report(&p) }
        for prefix in prefixes {
            var found = 0
            do {
                try client.forEachObject(store: prefix.store, bucket: prefix.bucket, prefix: prefix.prefix) { e throws(ShoalError) in
                    found += 1
                    let ref = ObjectRef(store: prefix.store, bucket: prefix.bucket, key: e.key)
                    // Overlapping prefixes name an object once.
                    guard seen.insert(ref).inserted else { return true }
                    let file = try client.open(ref, version: e.version)
                    let blocks = Int(BlockLayout(blockSize: UInt64(file.blockSize)).blockCount(objectSize: file.size))
                    objects.append(WarmedObject(file: file, blocksLeft: blocks))
                    p.objectsTotal += 1
                    p.bytesTotal += file.size
                    if p.objectsTotal % 1000 == 0 { tick() }
                    return true
                }
            } catch where error.code != .badRequest {
                listingFailures.append((prefix, error))
                continue
            }
            if found == 0 { empty.append(prefix) }
        }
        p.listing = false
        tick()
        p.listingSeconds = p.seconds
        // Objects of no blocks (empty ones) are done at once.
        for i in objects.indices where objects[i].blocksLeft == 0 { finish(i, &objects, &p) }

        // A chunk's fills drain before the next chunk's start, and its failures that may pass are
        // tried again then: up to 16384 blocks or 16 GiB, whichever comes first. Progress is told
        // as blocks are answered.
        let chunk = max(16384, 64 * options.concurrency)
        let chunkBytes = max(UInt64(16) << 30, UInt64(4 * options.concurrency) * BlockLayout.maxBlockSize)
        var batch: [(object: Int, block: ShoalClient.BlockOfFile)] = []
        var batchBytes: UInt64 = 0
        func flush() throws(ShoalError) {
            guard !batch.isEmpty else { return }
            try process(batch, &objects, &p, report)
            batch.removeAll(keepingCapacity: true)
            batchBytes = 0
            tick()
        }
        for (i, o) in objects.enumerated() {
            for b in 0..<o.blocksLeft {
                let block = ShoalClient.BlockOfFile(file: o.file, index: UInt64(b))
                batch.append((i, block))
                batchBytes += UInt64(block.length)
                if batch.count >= chunk || batchBytes >= chunkBytes { try flush() }
            }
        }
        try flush()
        return WarmSummary(progress: p, objects: objects, emptyPrefixes: empty, listingFailures: listingFailures)
    }

    /// One chunk: fill-only READs of its blocks (paced per store), then records. A block its
    /// owner holds needs no probe first: the owner's index answers its fill-only READ ("cache")
    /// as it would a probe, with no GET. Probes go first with `checkOnly` (they are all it
    /// sends) and under a bandwidth cap (only the blocks not cached are paced).
    private func process(_ batch: [(object: Int, block: ShoalClient.BlockOfFile)], _ objects: inout [WarmedObject],
                         _ p: inout WarmProgress, _ report: (inout WarmProgress) -> Void) throws(ShoalError) {
        var missing: [Int] = []
        if options.checkOnly || options.bytesPerSecondPerStore != nil {
            for (k, r) in try client.probe(batch.map(\.block)).enumerated() {
                switch r {
                case .success(true): record(batch[k], .success(.cache), &objects, &p)
                case .success(false) where options.checkOnly: record(batch[k], .success(nil), &objects, &p)
                case .failure(let e) where options.checkOnly: record(batch[k], .failure(e), &objects, &p)
                default: missing.append(k)  // not cached, or the probe failed: the fill finds out
                }
            }
            guard !options.checkOnly else { return }
        } else {
            missing = Array(batch.indices)
        }
        // One call keeps `concurrency` fills in flight across the chunk; paced, a call per
        // `concurrency` blocks, each after its bytes are allowed.
        let step = options.bytesPerSecondPerStore == nil ? max(1, missing.count) : options.concurrency
        var start = 0
        while start < missing.count {
            let group = Array(missing[start..<min(missing.count, start + step)])
            start += group.count
            pace(group.map { batch[$0].block })
            var pending = group
            var attempt = 1
            while !pending.isEmpty {
                var again: [Int] = []
                _ = try client.warm(pending.map { batch[$0].block }, inFlight: options.concurrency) { i, r in
                    let k = pending[i]
                    if case .failure(let e) = r, attempt < options.attempts, Warmer.mayPass(e) {
                        again.append(k)
                    } else {
                        record(batch[k], r.map { Optional($0) }, &objects, &p)
                        report(&p)
                    }
                }
                guard !again.isEmpty else { break }
                p.retries += again.count
                sleepNanos(UInt64(options.retryBackoffSeconds * Double(1 << (attempt - 1)) * 1e9))
                attempt += 1
                pending = again
            }
            // Paced, a chunk takes a while: its progress is told group by group.
            if start < missing.count { report(&p) }
        }
    }

    /// A failure that may pass when tried again (the object is not at fault).
    static func mayPass(_ e: ShoalError) -> Bool {
        switch e.code {
        case .storeUnavailable, .timeout, .connectionFailed, .shuttingDown, .notOwner, .notCached: return true
        default: return false
        }
    }

    /// Waits until the stores of `blocks` may send their bytes under the cap.
    private func pace(_ blocks: [ShoalClient.BlockOfFile]) {
        guard let rate = options.bytesPerSecondPerStore else { return }
        var bytes: [String: UInt64] = [:]
        for b in blocks { bytes[b.file.object.store, default: 0] += UInt64(b.length) }
        for (store, n) in bytes {
            let bucket = buckets[store] ?? TokenBucket(bytesPerSecond: rate)
            buckets[store] = bucket
            sleepNanos(bucket.take(n, now: monotonicNanos()))
        }
    }

    /// One block answered: `.success(origin)` cached (nil: not cached, a check), or failed.
    private func record(_ item: (object: Int, block: ShoalClient.BlockOfFile), _ r: Result<BlockOrigin?, ShoalError>,
                        _ objects: inout [WarmedObject], _ p: inout WarmProgress) {
        let i = item.object
        switch r {
        case .success(let origin?):
            objects[i].bytesResident += UInt64(item.block.length)
            if origin == .store { p.blocksFromStore += 1 }
            if origin == .peer { p.blocksFromPeers += 1 }
            if origin != .cache { objects[i].blocksFilled += 1 }
        case .success(nil):
            break
        case .failure(let e):
            if objects[i].failure == nil { objects[i].failure = e }
        }
        objects[i].blocksLeft -= 1
        if objects[i].blocksLeft == 0 { finish(i, &objects, &p) }
    }

    private func finish(_ i: Int, _ objects: inout [WarmedObject], _ p: inout WarmProgress) {
        let o = objects[i]
        p.objectsDone += 1
        p.bytesDone += o.file.size
        if o.failure != nil {
            p.objectsFailed += 1
        } else if options.checkOnly {
            if o.bytesResident == o.file.size { p.objectsResident += 1 }
        } else if o.blocksFilled > 0 {
            p.objectsNewlyCached += 1
            p.bytesNewlyCached += o.file.size
        } else {
            p.objectsAlreadyCached += 1
            p.bytesAlreadyCached += o.file.size
        }
        p.bytesResident += o.bytesResident
    }
}

/// Paces bytes to a rate: each `take` says how long to wait before sending them, so that no
/// more than `bytesPerSecond` go out on average (a second's worth may go at once).
public final class TokenBucket {
    public let bytesPerSecond: UInt64
    private var available: Double
    private var last: UInt64?

    public init(bytesPerSecond: UInt64) {
        self.bytesPerSecond = max(1, bytesPerSecond)
        available = Double(self.bytesPerSecond)
    }

    /// Takes `bytes` at `now` (monotonic nanoseconds); the nanoseconds to wait before sending.
    public func take(_ bytes: UInt64, now: UInt64) -> UInt64 {
        let rate = Double(bytesPerSecond)
        if let last { available = min(rate, available + Double(elapsedNanos(from: last, to: now)) / 1e9 * rate) }
        last = now
        available -= Double(bytes)
        guard available < 0 else { return 0 }
        return UInt64((-available / rate) * 1e9)
    }
}
