#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys
import ShoalTransport

/// Where a client or a worker takes the cluster's view from: the members file or etcd.
public protocol MembershipSource: AnyObject, Sendable {
    /// The view in use and its placement; with `force`, the source is asked again now.
    func current(force: Bool) -> (view: MembershipView, placement: Placement)
    /// Why the source's last answer was not taken (the view before it stays); nil when it was.
    var error: String? { get }
    /// The source, for messages ("members file F", "etcd E prefix P").
    var name: String { get }
    /// Stops watching (no-op for a file).
    func close()
    /// Changes reach the view as they happen (a watch), so asking again is never needed to
    /// serve correctly.
    var isWatched: Bool { get }
    /// Called with each view the source takes in place of the one before, and its placement
    /// (workers log it and note it for hand-over).
    var onChange: (@Sendable (MembershipView, Placement) -> Void)? { get set }
    /// Called (under the source's lock: do not call back into it) when a new reason appears for
    /// not taking the source's answer; workers log it.
    var onError: (@Sendable (String) -> Void)? { get set }
}

extension MembersWatcher: MembershipSource {
    public var name: String { "members file \(path)" }
    public func close() {}
    public var isWatched: Bool { false }
}

/// A small etcd v3 client over etcd's JSON gateway: plain HTTP POSTs through libcurl, keys and
/// values in base64, numbers as strings. Enough for membership: range, put, delete, leases and
/// a watch (one long streaming response). Each call tries the endpoints in turn, starting with
/// the last that answered.
public final class EtcdClient: @unchecked Sendable {
    public let endpoints: [String]
    /// How long one call may take on one endpoint (a watch has no limit).
    public var timeoutMillis = 2_000
    private let lock = ConditionLock()
    private var preferred = 0
    /// etcd's user and password, when its authentication is on (it should be: the view decides
    /// where clients send reads).
    let credentials: (user: String, password: String)?
    private var token: String?

    /// `endpoints`: host:port or http://host:port.
    public init(endpoints: [String], user: String? = nil, password: String? = nil) throws(ShoalError) {
        if let user, !user.isEmpty { credentials = (user, password ?? "") } else { credentials = nil }
        guard !endpoints.isEmpty else { throw ShoalError(.badRequest, "no etcd endpoint given (e.g. 127.0.0.1:2379)") }
        var urls: [String] = []
        for e in endpoints {
            guard !e.hasPrefix("https://") else { throw ShoalError(.badRequest, "etcd endpoint '\(e)': only plain http is supported; run etcd on a private network") }
            var bare = Substring(e.hasPrefix("http://") ? String(e.dropFirst(7)) : e)
            if bare.hasSuffix("/") { bare = bare.dropLast() }
            guard Endpoint(String(bare)) != nil else { throw ShoalError(.badRequest, "etcd endpoint '\(e)' is not host:port") }
            urls.append("http://" + bare)
        }
        self.endpoints = urls
    }

    public struct KeyValue: Sendable, Equatable {
        public var key: String
        public var value: [UInt8]
        public var modRevision: UInt64
    }

    /// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
    static func rangeEnd(_ prefix: String) -> [UInt8] {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xFF { bytes[bytes.count - 1] = last + 1; return bytes }
            bytes.removeLast()
        }
        return [0]
    }

    static func number(_ any: Any?) -> UInt64? {
        if let s = any as? String { return UInt64(s) }
        if let i = any as? Int, i >= 0 { return UInt64(i) }
        return nil
    }

    /// The header that authenticates a call (a token taken with the password, kept until etcd
    /// refuses it); none without credentials.
    func authorization(renew: Bool = false) throws(ShoalError) -> [String] {
        guard let credentials else { return [] }
        if !renew, let token = lock.withLock({ token }) { return ["Authorization: \(token)"] }
        let json = try call("/v3/auth/authenticate", "{\"name\":\(JSONText.quote(credentials.user)),\"password\":\(JSONText.quote(credentials.password))}", authenticated: false)
        guard let fresh = json["token"] as? String, !fresh.isEmpty else {
            throw ShoalError(.unauthenticated, "etcd gave no token for user '\(credentials.user)'")
        }
        lock.withLock { token = fresh }
        return ["Authorization: \(fresh)"]
    }

    /// POSTs `body` to `path` on each endpoint in turn until one answers 200; its JSON. A token
    /// etcd no longer takes is renewed once.
    func call(_ path: String, _ body: String, authenticated: Bool = true) throws(ShoalError) -> [String: Any] {
        guard authenticated, credentials != nil else { return try post(path, body, headers: []) }
        do {
            return try post(path, body, headers: try authorization())
        } catch let error where error.code == .unauthenticated {
            return try post(path, body, headers: try authorization(renew: true))
        }
    }

    func post(_ path: String, _ body: String, headers: [String]) throws(ShoalError) -> [String: Any] {
        let start = lock.withLock { preferred }
        var why: [String] = []
        for step in 0..<endpoints.count {
            let i = (start + step) % endpoints.count
            var request = HTTPRequest(method: "POST", url: endpoints[i] + path)
            request.body = Array(body.utf8)
            request.headers = ["Content-Type: application/json"] + headers
            request.connectTimeoutMillis = min(timeoutMillis, 1_000)
            request.totalTimeoutMillis = timeoutMillis
            let sink = HTTPBodySink(limit: 16 << 20)
            do {
                let curl = try CurlEasy()
                let response = try curl.perform(request, sink: sink)
                if response.status >= 500 || response.status == 408 || response.status == 429 {
                    // This member cannot serve now (no leader, overloaded): try the next one.
                    why.append("\(endpoints[i]): HTTP \(response.status)")
                    continue
                }
                guard response.status == 200 else {
                    // etcd answered: the request is wrong, another endpoint would say the same.
                    let why = "etcd \(endpoints[i]) answered \(path) with HTTP \(response.status): \(sink.text.prefix(300))"
                    throw ShoalError(response.status == 401 ? .unauthenticated : .badRequest, why)
                }
                guard let json = (try? JSON.parse(sink.bytes)) as? [String: Any] else {
                    throw ShoalError(.badRequest, "etcd \(endpoints[i]) answered \(path) with something that is not a JSON object")
                }
                lock.withLock { preferred = i }
                return json
            } catch let error as CurlError {
                why.append("\(endpoints[i]): \(error.message)")
            } catch let error as ShoalError {
                throw error
            } catch {
                why.append("\(endpoints[i]): \(error)")
            }
        }
        throw ShoalError(.connectionFailed, "etcd unreachable (\(why.joined(separator: "; ")))")
    }

    /// Every key that starts with `prefix`, and the store's revision when they were read.
    public func range(prefix: String) throws(ShoalError) -> (revision: UInt64, kvs: [KeyValue]) {
        let json = try call("/v3/kv/range", "{\"key\":\"\(Base64.encode(prefix.utf8))\",\"range_end\":\"\(Base64.encode(EtcdClient.rangeEnd(prefix)))\"}")
        guard let header = json["header"] as? [String: Any], let revision = EtcdClient.number(header["revision"]) else {
            throw ShoalError(.badRequest, "etcd's range answer has no header revision")
        }
        var kvs: [KeyValue] = []
        for item in json["kvs"] as? [Any] ?? [] {
            guard let kv = item as? [String: Any], let key = (kv["key"] as? String).flatMap(Base64.decode) else { continue }
            let value = (kv["value"] as? String).flatMap(Base64.decode) ?? []
            kvs.append(KeyValue(key: String(decoding: key, as: UTF8.self), value: value, modRevision: EtcdClient.number(kv["mod_revision"]) ?? 0))
        }
        return (revision, kvs)
    }

    /// Whether `key` is there.
    public func exists(_ key: String) throws(ShoalError) -> Bool {
        let json = try call("/v3/kv/range", "{\"key\":\"\(Base64.encode(key.utf8))\",\"count_only\":true}")
        return (EtcdClient.number(json["count"]) ?? 0) > 0
    }

    /// Sets `key`, tied to `lease` (0: none; the key then stays until deleted).
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) throws(ShoalError) {
        _ = try call("/v3/kv/put", "{\"key\":\"\(Base64.encode(key.utf8))\",\"value\":\"\(Base64.encode(value))\",\"lease\":\"\(lease)\"}")
    }

    /// Deletes `key`; whether it was there.
    @discardableResult
    public func delete(_ key: String) throws(ShoalError) -> Bool {
        let json = try call("/v3/kv/deleterange", "{\"key\":\"\(Base64.encode(key.utf8))\"}")
        return (EtcdClient.number(json["deleted"]) ?? 0) > 0
    }

    /// A new lease of `ttlSeconds`; its id.
    public func grant(ttlSeconds: Int) throws(ShoalError) -> Int64 {
        let json = try call("/v3/lease/grant", "{\"TTL\":\"\(ttlSeconds)\"}")
        guard let id = (json["ID"] as? String).flatMap({ Int64($0) }) else { throw ShoalError(.badRequest, "etcd's lease grant answer has no ID") }
        return id
    }

    /// Renews `lease`; the seconds it has left, 0 when it has expired (its keys are gone).
    public func keepAlive(_ lease: Int64) throws(ShoalError) -> Int {
        let json = try call("/v3/lease/keepalive", "{\"ID\":\"\(lease)\"}")
        let result = json["result"] as? [String: Any] ?? json
        return Int(EtcdClient.number(result["TTL"]) ?? 0)
    }

    /// Ends `lease` now: its keys are deleted at once.
    public func revoke(_ lease: Int64) throws(ShoalError) {
        _ = try call("/v3/lease/revoke", "{\"ID\":\"\(lease)\"}")
    }

    /// Watches every key under `prefix` from `revision` on: `changed` gets the revision of each
    /// batch of events, as they come. Returns when `sink`'s owner cancels it (`cancel`), and
    /// throws when the stream breaks or etcd ends the watch (compaction: read the range again).
    public func watch(prefix: String, from revision: UInt64, cancel: (HTTPBodySink) -> Void, changed: @escaping (UInt64) -> Void) throws(ShoalError) {
        let url = lock.withLock { endpoints[preferred] }
        var request = HTTPRequest(method: "POST", url: url + "/v3/watch")
        request.body = Array(("{\"create_request\":{\"key\":\"\(Base64.encode(prefix.utf8))\",\"range_end\":\"\(Base64.encode(EtcdClient.rangeEnd(prefix)))\","
                              + "\"start_revision\":\"\(revision)\",\"progress_notify\":true}}").utf8)
        request.headers = ["Content-Type: application/json"] + (try authorization())
        request.connectTimeoutMillis = 1_000
        request.stallTimeoutSeconds = 0
        var line: [UInt8] = []
        var ended: String?
        let sink = HTTPBodySink(streaming: { piece in
            for byte in piece {
                guard byte == UInt8(ascii: "\n") else {
                    if line.count < 16 << 20 { line.append(byte) }
                    continue
                }
                defer { line.removeAll(keepingCapacity: true) }
                guard let json = (try? JSON.parse(line)) as? [String: Any] else {
                    ended = "a watch message that is not JSON"
                    return false
                }
                let result = json["result"] as? [String: Any] ?? [:]
                if let error = json["error"] {
                    ended = "etcd ended the watch: \(error)"
                    return false
                }
                if result["canceled"] as? Bool == true {
                    let reason = "\(result["cancel_reason"] ?? "compacted")"
                    // A token that ran out: take a new one for the next watch.
                    if reason.contains("auth") || reason.contains("user name") || reason.contains("permission") { self.lock.withLock { self.token = nil } }
                    ended = "etcd cancelled the watch (\(reason))"
                    return false
                }
                if result["events"] != nil, let header = result["header"] as? [String: Any], let rev = EtcdClient.number(header["revision"]) {
                    changed(rev)
                }
            }
            return true
        })
        cancel(sink)
        do {
            let curl = try CurlEasy()
            let response = try curl.perform(request, sink: sink)
            if let ended { throw ShoalError(.connectionFailed, ended) }
            if sink.stopped { return }
            throw ShoalError(.connectionFailed, "etcd \(url) ended the watch (HTTP \(response.status))")
        } catch let error as CurlError {
            throw ShoalError(.connectionFailed, "etcd \(url) watch broke: \(error.message)")
        } catch let error as ShoalError {
            throw error
        } catch {
            throw ShoalError(.connectionFailed, "etcd \(url) watch broke: \(error)")
        }
    }
}

/// The cluster's view from etcd. Each worker registers itself under `<prefix>members/<id>` (a
/// JSON value with address, weight and state, tied to a lease it keeps alive, so a worker that
/// dies leaves the view when its lease runs out); `shoal drain` sets `<prefix>drain/<id>`, which
/// makes that member draining. A thread watches the prefix and reads it again on every change.
/// The view's epoch is etcd's revision when the members last changed, so views are ordered
/// across every reader. A value that does not parse, or etcd unreachable, keeps the last good
/// view; `error` says why.
public final class EtcdMembers: MembershipSource, @unchecked Sendable {
    public let client: EtcdClient
    public let prefix: String
    private let lock = ConditionLock()
    private var taken: (view: MembershipView, placement: Placement)
    private var _error: String? {
        didSet { if let e = _error, e != oldValue { onError?(e) } }
    }
    public var onError: (@Sendable (String) -> Void)?
    private var revision: UInt64 = 0
    private var closed = false
    private var watching: HTTPBodySink?
    /// The fork generation whose watch thread runs (-1: none yet).
    private var watcherGeneration = -1
    private var lastForced: UInt64 = 0
    private var forcing = false
    public var onChange: (@Sendable (MembershipView, Placement) -> Void)?

    /// `prefix`: the cluster's keys (e.g. "/shoal/default/"; a "/" is added at the end if missing).
    /// The first view is read now; when etcd cannot be reached the view is empty until it can.
    public init(client: EtcdClient, prefix: String) {
        self.client = client
        self.prefix = EtcdMembers.normalized(prefix)
        let empty = try! MembershipView(epoch: 0, members: [])
        taken = (empty, Placement(view: empty))
        reload()
    }

    public var isWatched: Bool { true }
    public var name: String { "etcd \(client.endpoints.joined(separator: ",")) prefix \(prefix)" }
    public var error: String? { lock.withLock { _error } }

    /// `prefix` with a "/" at its end.
    public static func normalized(_ prefix: String) -> String { prefix.hasSuffix("/") ? prefix : prefix + "/" }
    public static func memberKey(prefix: String, id: String) -> String { normalized(prefix) + "members/" + id }
    public static func drainKey(prefix: String, id: String) -> String { normalized(prefix) + "drain/" + id }

    /// The members under the prefix at one revision: the view, or why not.
    public static func view(prefix: String, revision: UInt64, kvs: [EtcdClient.KeyValue]) throws(ShoalError) -> MembershipView {
        let prefix = normalized(prefix)
        var members: [Member] = []
        var drained = Set<String>()
        for kv in kvs {
            let rest = kv.key.dropFirst(prefix.count)
            if rest.hasPrefix("drain/") { drained.insert(String(rest.dropFirst(6))); continue }
            guard rest.hasPrefix("members/") else { continue }
            let id = String(rest.dropFirst(8))
            func bad(_ what: String) -> ShoalError { ShoalError(.badRequest, "etcd value of \(kv.key): \(what)") }
            guard !id.isEmpty else { throw bad("no member id after members/") }
            guard let fields = (try? JSON.parse(kv.value)) as? [String: Any] else {
                throw bad("not a JSON object with address, weight and state")
            }
            for key in fields.keys where !["address", "weight", "state", "rdma"].contains(key) {
                throw bad("unknown key '\(key)' (known: address, weight, state, rdma)")
            }
            members.append(try MembersFile.member(id: id, fields: fields, at: "member", bad: bad))
        }
        for i in members.indices where drained.contains(members[i].id) { members[i].state = .draining }
        return try MembershipView(epoch: revision, members: members)
    }

    /// Reads the prefix again; returns the revision read at (nil: etcd did not answer).
    @discardableResult
    func reload() -> UInt64? {
        let read: (revision: UInt64, kvs: [EtcdClient.KeyValue])
        do { read = try client.range(prefix: prefix) } catch {
            lock.withLock { _error = error.message + "; kept the view of epoch \(taken.view.epoch)" }
            return nil
        }
        let next: MembershipView
        do { next = try EtcdMembers.view(prefix: prefix, revision: read.revision, kvs: read.kvs) } catch {
            lock.withLock {
                revision = max(revision, read.revision)
                _error = error.message + "; kept the view of epoch \(taken.view.epoch)"
            }
            return read.revision
        }
        let changed = lock.withLock { () -> Bool in
            revision = max(revision, read.revision)
            _error = nil
            return next.members != taken.view.members && next.epoch > taken.view.epoch
        }
        guard changed else { return read.revision }
        // Built outside the lock: a large view takes a while.
        let placement = Placement(view: next)
        let installed = lock.withLock { () -> Bool in
            guard next.epoch > taken.view.epoch else { return false }
            taken = (next, placement)
            return true
        }
        if installed { onChange?(next, placement) }
        return read.revision
    }

    /// With `force`, etcd is read now (at most every 100 ms: a peer cannot make this a flood).
    public func current(force: Bool = false) -> (view: MembershipView, placement: Placement) {
        if force {
            // One forced read at a time, at most every 100 ms; a caller that comes while one is
            // under way waits for its answer instead of taking the view from before it.
            let now = monotonicNanos()
            let due = lock.withLock { () -> Bool in
                if forcing {
                    while forcing, monotonicNanos() < now + 3_000_000_000 { _ = lock.wait(untilNanos: now + 3_000_000_000) }
                    return false
                }
                guard elapsedNanos(from: lastForced, to: now) >= 100_000_000 || lastForced == 0 else { return false }
                lastForced = now
                forcing = true
                return true
            }
            if due {
                reload()
                lock.withLock {
                    forcing = false
                    lock.broadcast()
                }
            }
        }
        let generation = ForkGeneration.current
        let (result, start) = lock.withLock { (taken, needsWatcher(generation)) }
        if start { spawnWatcher() }
        return result
    }

    /// Whether the watch thread is to be started now (under the lock): once per process, and
    /// again in a child after fork, where the parent's thread does not exist.
    private func needsWatcher(_ generation: Int) -> Bool {
        guard !closed, watcherGeneration != generation else { return false }
        watcherGeneration = generation
        return true
    }

    /// Starts the watch thread if it is not running in this process.
    public func startWatching() {
        let generation = ForkGeneration.current
        if lock.withLock({ needsWatcher(generation) }) { spawnWatcher() }
    }

    private func spawnWatcher() {
        try? OSThread.spawn(name: "shoal-etcd-watch") { [weak self] in
            while let self, !self.isClosed {
                let from = self.reload() ?? self.lock.withLock { self.revision }
                do {
                    try self.client.watch(prefix: self.prefix, from: from + 1, cancel: { sink in
                        // A close that came before this watch began ends it at once.
                        if self.lock.withLock({ self.watching = sink; return self.closed }) { sink.cancel() }
                    }) { [weak self] _ in
                        self?.reload()
                    }
                } catch {
                    self.lock.withLock { if self._error == nil { self._error = (error as? ShoalError)?.message ?? "\(error)" } }
                }
                if self.isClosed { return }
                // Not a busy loop when etcd is down: once a second at most.
                var pause = timespec(tv_sec: 1, tv_nsec: 0)
                nanosleep(&pause, nil)
            }
        }
    }

    private var isClosed: Bool { lock.withLock { closed } }

    public func close() {
        let sink = lock.withLock { () -> HTTPBodySink? in
            closed = true
            return watching
        }
        sink?.cancel()
    }
}

/// The view learned from the workers themselves: a client given only worker addresses asks them
/// (MEMBERS) for the view they route by, and asks again on the calling thread at most once per
/// `recheckNanos`, or at once when a worker answers `not_owner`: any member that answers will do.
/// When none answers, the last view stays in use and `error` says why.
public final class WorkerViewSource: MembershipSource, @unchecked Sendable {
    public typealias Connect = @Sendable (Endpoint) throws(ShoalError) -> WorkerConnection
    let connect: Connect
    let seeds: [Endpoint]
    let recheckNanos: UInt64
    private let lock = ConditionLock()
    private var taken: (view: MembershipView, placement: Placement)
    private var checked: UInt64
    private var _error: String? {
        didSet { if let e = _error, e != oldValue { onError?(e) } }
    }
    public var onChange: (@Sendable (MembershipView, Placement) -> Void)?
    public var onError: (@Sendable (String) -> Void)?
    /// The worker that answered last: asked first (a dead member early in the view would
    /// otherwise cost a connect timeout on every look).
    private var answered: Endpoint?

    init(seeds: [Endpoint], view: MembershipView, recheckSeconds: Double, connect: @escaping Connect) {
        self.seeds = seeds
        self.connect = connect
        recheckNanos = UInt64(max(0, recheckSeconds) * 1e9)
        taken = (view, Placement(view: view))
        checked = monotonicNanos()
    }

    /// Asks `seeds` in turn for their view: a source following it, or nil when none answered with
    /// a view of any member (standalone workers, or none reachable: the list is the cluster).
    public static func learn(seeds: [Endpoint], recheckSeconds: Double, connect: @escaping Connect) -> WorkerViewSource? {
        for seed in seeds {
            guard let view = try? ask(seed, connect), !view.members.isEmpty else { continue }
            return WorkerViewSource(seeds: seeds, view: view, recheckSeconds: recheckSeconds, connect: connect)
        }
        return nil
    }

    static func ask(_ endpoint: Endpoint, _ connect: Connect) throws(ShoalError) -> MembershipView {
        let c = try connect(endpoint)
        defer { c.close() }
        return try c.members()
    }

    public var name: String { "the workers' view (from \(seeds.map(\.description).joined(separator: ", ")))" }
    public var error: String? { lock.withLock { _error } }
    public var isWatched: Bool { false }
    public func close() {}

    public func current(force: Bool = false) -> (view: MembershipView, placement: Placement) {
        let now = monotonicNanos()
        let (due, view) = lock.withLock { () -> (Bool, MembershipView) in
            guard force || elapsedNanos(from: checked, to: now) >= recheckNanos else { return (false, taken.view) }
            checked = now
            return (true, taken.view)
        }
        guard due else { return lock.withLock { taken } }
        var why: [String] = []
        let last = lock.withLock { answered }
        let candidates = (last.map { [$0] } ?? []) + view.members.compactMap { Endpoint($0.address) }.filter { $0 != last } + seeds
        for endpoint in candidates {
            do {
                let next = try WorkerViewSource.ask(endpoint, connect)
                guard !next.members.isEmpty else { why.append("\(endpoint): it has no view"); continue }
                let placement = next.epoch > view.epoch && next != view ? Placement(view: next) : nil
                let installed = lock.withLock { () -> Bool in
                    defer { _error = nil; answered = endpoint }
                    guard let placement, next.epoch > taken.view.epoch else { return false }
                    taken = (next, placement)
                    return true
                }
                if installed, let placement { onChange?(next, placement) }
                return lock.withLock { taken }
            } catch {
                why.append("\(endpoint): \(error.message)")
            }
        }
        lock.withLock { _error = "no worker gave its view (\(why.joined(separator: "; "))); kept the view of epoch \(view.epoch)" }
        return lock.withLock { taken }
    }
}
