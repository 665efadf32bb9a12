import Logging
import ShoalClient
import ShoalCore
import ShoalSys
#if canImport(Glibc)
import Glibc
#endif

/// A worker's entry in etcd: `<prefix>members/<id>` = {"address", "weight", "state", "rdma"}, tied to a
/// lease renewed every third of its time to live (and put again if it went). While etcd cannot be reached the worker keeps
/// serving and keeps trying; a lease that ran out meanwhile is taken again with the entry. On
/// stop the lease is revoked, so clients move the worker's blocks at once instead of after the
/// lease runs out.
final class EtcdRegistration: @unchecked Sendable {
    let client: EtcdClient
    let key: String
    let value: [UInt8]
    let ttl: Int
    let logger: Logger
    private let lock = ConditionLock()
    private var lease: Int64 = 0
    private var stopped = false
    private var lastError: String?

    init(client: EtcdClient, prefix: String, member: Member, leaseSeconds: Int, logger: Logger) {
        self.client = client
        key = EtcdMembers.memberKey(prefix: prefix, id: member.id)
        let weight = member.weight == member.weight.rounded() && member.weight < 1e18 ? "\(Int64(member.weight))" : "\(member.weight)"
        let rdma = member.rdma.map { ",\"rdma\":\($0)" } ?? ""
        value = Array("{\"address\":\(JSONText.quote(member.address)),\"weight\":\(weight),\"state\":\"\(member.state.rawValue)\"\(rdma)}".utf8)
        ttl = leaseSeconds
        self.logger = logger
    }

    /// Registers now if etcd answers (else later), then renews on a thread.
    func start() {
        renew()
        try? OSThread.spawn(name: "shoal-etcd-lease") { [self] in
            while true {
                let deadline = monotonicNanos() + UInt64(ttl) * 1_000_000_000 / 3
                let done = lock.withLock { () -> Bool in
                    while !stopped, monotonicNanos() < deadline { _ = lock.wait(untilNanos: deadline) }
                    return stopped
                }
                if done { return }
                renew()
            }
        }
    }

    /// Keeps the lease alive, or takes a new one and puts the entry again.
    private func renew() {
        let current = lock.withLock { lease }
        do throws(ShoalError) {
            // Renewed, and the entry still there (a key deleted by hand leaves its lease alive).
            if current != 0, try client.keepAlive(current) > 0, try client.exists(key) {
                reportOK()
                return
            }
            if current != 0 { try? client.revoke(current) }
            let fresh = try client.grant(ttlSeconds: ttl)
            try client.put(key, value, lease: fresh)
            lock.withLock { lease = fresh }
            logger.info("registered in etcd", metadata: ["key": "\(key)", "lease": "\(ttl)s"])
            reportOK()
        } catch {
            let message = error.message
            let first = lock.withLock { () -> Bool in
                defer { lastError = message }
                return lastError != message
            }
            if first { logger.warning("cannot renew the etcd registration; serving on, trying again", metadata: ["key": "\(key)", "error": "\(message)"]) }
        }
    }

    private func reportOK() { lock.withLock { lastError = nil } }

    /// Why the last renewal failed; nil when it worked.
    var error: String? { lock.withLock { lastError } }

    /// Stops renewing and revokes the lease (the entry goes with it).
    func stop() {
        let current = lock.withLock { () -> Int64 in
            stopped = true
            lock.broadcast()
            return lease
        }
        guard current != 0 else { return }
        do { try client.revoke(current) } catch {
            logger.warning("cannot revoke the etcd lease; the entry goes when it runs out", metadata: ["key": "\(key)", "error": "\(error.message)"])
        }
    }
}
