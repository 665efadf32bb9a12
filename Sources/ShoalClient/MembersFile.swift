import ShoalCore
import ShoalSys

/// The static members file, the embedded membership source: the cluster's workers in YAML (or
/// JSON, which is YAML too; libshoal and the Python package read JSON only, as they carry no
/// YAML parser; what `render` writes is JSON),
///
///     epoch: 3
///     members:
///       - id: w0                      # stable; never reuse one for another worker
///         address: 127.0.0.1:17070    # its data plane
///         weight: 4GiB                # a size or a number (its share of the slots); default 1
///         state: active               # joining, active or draining; default active
///
/// A client given the file reads it again when it changes; `shoal drain` and `shoal undrain`
/// rewrite a member's state and raise the epoch.
public enum MembersFile {
    /// How a members file that is not JSON is read: set by programs that have a YAML parser (the
    /// command line and the worker set Yams's, `WorkerConfig.installYAMLMembers`); nil in
    /// libshoal, which then reads JSON only. Set once, before any client is made.
    nonisolated(unsafe) public static var yamlLoader: (@Sendable (String) throws -> Any?)?

    public static func parse(_ text: String, source: String) throws(ShoalError) -> MembershipView {
        func bad(_ what: String) -> ShoalError { ShoalError(.badRequest, "members file \(source): \(what)") }
        let loaded: Any?
        if text.utf8.first(where: { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }) == UInt8(ascii: "{") {
            do { loaded = try JSON.parse(text) } catch { throw bad("not valid JSON: \(error)") }
        } else if let yaml = yamlLoader {
            do { loaded = try yaml(text) } catch { throw bad("not valid YAML: \(error)") }
        } else {
            throw bad("this program reads members files written as JSON only (an object with 'epoch' and 'members', as `shoal drain` and Tools/cluster.sh write them)")
        }
        guard let root = loaded as? [String: Any] else { throw bad("the top level must be a mapping with 'epoch' and 'members'") }
        for key in root.keys where key != "epoch" && key != "members" { throw bad("unknown key '\(key)' (known: epoch, members)") }
        guard let epochValue = root["epoch"] else { throw bad("key 'epoch' is missing (a number that grows with every change)") }
        guard let epoch = (epochValue as? Int).flatMap({ $0 >= 0 ? UInt64($0) : nil }) else {
            throw bad("key 'epoch' is '\(epochValue)', not a whole number of 0 or more")
        }
        guard let list = root["members"] as? [Any] else { throw bad("key 'members' must be a list of members") }
        var members: [Member] = []
        for (i, item) in list.enumerated() {
            let at = "members[\(i)]"
            guard let m = item as? [String: Any] else { throw bad("\(at) must be a mapping with id, address, weight, state") }
            for key in m.keys where !["id", "address", "weight", "state", "rdma"].contains(key) {
                throw bad("\(at): unknown key '\(key)' (known: id, address, weight, state, rdma)")
            }
            guard let id = m["id"].map({ "\($0)" }), !id.isEmpty else { throw bad("\(at).id is missing") }
            members.append(try member(id: id, fields: m, at: at, bad: bad))
        }
        do { return try MembershipView(epoch: epoch, members: members) } catch { throw bad(error.message) }
    }

    /// A member from its fields (address, weight, state; as in the file and in etcd's values).
    static func member(id: String, fields m: [String: Any], at: String, bad: (String) -> ShoalError) throws(ShoalError) -> Member {
        guard let address = m["address"] as? String, Endpoint(address) != nil else {
            throw bad("\(at).address '\(m["address"].map { "\($0)" } ?? "")' is not host:port")
        }
        var weight = 1.0
        if let w = m["weight"] {
            if let n = w as? Int { weight = Double(n) } else if let d = w as? Double { weight = d } else if let s = w as? String, let bytes = ByteSize.parse(s) {
                weight = Double(bytes)
            } else {
                throw bad("\(at).weight '\(w)' is not a number or a size (like 4TiB)")
            }
        }
        var state = MemberState.active
        if let s = m["state"] {
            guard let text = s as? String, let parsed = MemberState(rawValue: text) else {
                throw bad("\(at).state '\(s)' is not one of \(MemberState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            state = parsed
        }
        var rdma: Bool?
        if let r = m["rdma"] {
            guard let b = r as? Bool else { throw bad("\(at).rdma '\(r)' is not true or false") }
            rdma = b
        }
        return Member(id: id, address: address, weight: weight, state: state, rdma: rdma)
    }

    /// Reads and parses `path`.
    public static func load(_ path: String) throws(ShoalError) -> MembershipView {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readFile(path) } catch { throw ShoalError(.badRequest, "members file \(path) cannot be read: \(error)") }
        return try parse(String(decoding: bytes, as: UTF8.self), source: path)
    }

    /// The file for `view`.
    /// The file for `view`, as JSON (which YAML readers read too): every client can read it.
    public static func render(_ view: MembershipView) -> String {
        let members = view.members.map { m in
            let weight = m.weight == m.weight.rounded() && abs(m.weight) < 1e18 ? "\(Int64(m.weight))" : "\(m.weight)"
            let rdma = m.rdma.map { ", \"rdma\": \($0)" } ?? ""
            return "    {\"id\": \(JSONText.quote(m.id)), \"address\": \(JSONText.quote(m.address)), \"weight\": \(weight), \"state\": \"\(m.state.rawValue)\"\(rdma)}"
        }
        return "{\"epoch\": \(view.epoch), \"members\": [\n" + members.joined(separator: ",\n") + "\n]}\n"
    }

    /// Writes `view` to `path` in one step (a new file renamed over the old), so a reader never
    /// sees half of it.
    public static func write(_ view: MembershipView, to path: String) throws(ShoalError) {
        let temporary = path + ".new"
        do {
            try FileSystem.writeFile(temporary, Array(render(view).utf8), permissions: 0o644)
            try FileSystem.rename(temporary, path)
        } catch {
            FileSystem.remove(temporary)
            throw ShoalError(.internal, "cannot write members file \(path): \(error)")
        }
    }
}

/// A members file and the view last taken from it, read again when it changes (looked at once
/// per `recheckNanos` at most, or at once when asked to). A file that does not parse, or whose
/// epoch is older than the view in use, leaves that view in use; `error` says why.
public final class MembersWatcher: @unchecked Sendable {
    public let path: String
    /// How often the file is looked at, at most (tests set 0: every time).
    public var recheckNanos: UInt64
    private let lock = ConditionLock()
    private var taken: (view: MembershipView, placement: Placement)
    private var stamp: (UInt64, UInt64)?
    private var checked: UInt64
    private var _error: String? {
        didSet { if let e = _error, e != oldValue { onError?(e) } }
    }
    public var onError: (@Sendable (String) -> Void)?
    public var onChange: (@Sendable (MembershipView, Placement) -> Void)?

    public init(path: String, recheckSeconds: Double = 1) throws(ShoalError) {
        self.path = path
        recheckNanos = UInt64(max(0, recheckSeconds) * 1e9)
        stamp = FileSystem.info(path).map { ($0.modifiedNanos, $0.size) }
        let view = try MembersFile.load(path)
        taken = (view, Placement(view: view))
        checked = monotonicNanos()
    }

    /// Why the file last read was not taken; nil when it was.
    public var error: String? { lock.withLock { _error } }

    /// The view in use and its placement; with `force`, the file is looked at now.
    public func current(force: Bool = false) -> (view: MembershipView, placement: Placement) {
        let now = monotonicNanos()
        let (due, last) = lock.withLock { () -> (Bool, (UInt64, UInt64)?) in
            guard force || elapsedNanos(from: checked, to: now) >= recheckNanos else { return (false, nil) }
            checked = now
            return (true, stamp)
        }
        if due, let info = FileSystem.info(path), last.map({ $0 != (info.modifiedNanos, info.size) }) ?? true {
            let result = Result { () throws(ShoalError) -> MembershipView in try MembersFile.load(path) }
            // Built outside the lock: a large view takes a while.
            let next = try? result.get()
            let placement = next.map { Placement(view: $0) }
            let installed = lock.withLock { () -> Bool in
                stamp = (info.modifiedNanos, info.size)
                switch result {
                case .success(let view) where view.epoch >= taken.view.epoch:
                    _error = nil
                    guard view != taken.view else { return false }
                    taken = (view, placement!)
                    return true
                case .success(let view):
                    _error = "members file \(path) has epoch \(view.epoch), older than the view in use (\(taken.view.epoch)); kept that view"
                case .failure(let error):
                    _error = error.message + "; kept the view of epoch \(taken.view.epoch)"
                }
                return false
            }
            if installed, let next, let placement { onChange?(next, placement) }
        }
        return lock.withLock { taken }
    }
}
