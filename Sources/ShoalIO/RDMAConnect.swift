#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
import ShoalSys
internal import CVerbs
internal import CRDMACM

/// Connections between processes through librdmacm: a reliable-connected queue pair per peer,
/// addressed by IP (so the RoCEv2 GID is the one of that address), with up to 56 bytes of
/// private data each way in the handshake (a buffer's address, rkey and length, say).
/// `RDMAListener` waits for peers; `RDMAConnection.connect` dials one.
public final class RDMAConnection: @unchecked Sendable {
    /// The queue pair, through the same interface as every other (`RDMAQueue` counts it).
    public let queuePair: any RDMAQueuePairDriver
    /// The device of the connection's context (memory to write from is registered with it).
    public let device: VerbsRDMADevice
    /// What the peer sent in the handshake.
    public let peerData: [UInt8]
    private let channel: UnsafeMutablePointer<rdma_event_channel>?

    init(queuePair: any RDMAQueuePairDriver, device: VerbsRDMADevice, peerData: [UInt8], channel: UnsafeMutablePointer<rdma_event_channel>?) {
        self.queuePair = queuePair
        self.device = device
        self.peerData = peerData
        self.channel = channel
    }

    private var closed = false

    /// Disconnects and frees the queue pair, its id and its event channel (once).
    public func close() {
        guard !closed else { return }
        closed = true
        queuePair.close()
        if let channel { rdma_destroy_event_channel(channel) }
    }

    /// The most bytes of handshake data (rdma_cm carries 56 on a connect; one is the length).
    public static let maxHandshake = 55

    /// Handshake data as sent: its length, then the bytes (rdma_cm pads what it delivers).
    static func framed(_ data: [UInt8]) throws(RDMAError) -> [UInt8] {
        guard data.count <= maxHandshake else { throw RDMAError("handshake data of \(data.count) bytes; at most \(maxHandshake)") }
        return [UInt8(data.count)] + data
    }

    static func unframed(_ raw: [UInt8]) -> [UInt8] {
        guard let n = raw.first, raw.count > Int(n) else { return [] }
        return Array(raw[1...Int(n)])
    }

    /// Connects to a listener at `address:port`, sending `data` (at most 56 bytes).
    public static func connect(to address: String, port: UInt16, depth: Int, data: [UInt8], timeoutMillis: Int32 = 5000) throws(RDMAError) -> RDMAConnection {
        let sent = try framed(data)
        guard let channel = rdma_create_event_channel() else { throw RDMAError("rdma_cm: no event channel (errno \(errno)): no RDMA device?") }
        var id: UnsafeMutablePointer<rdma_cm_id>?
        guard rdma_create_id(channel, &id, nil, RDMA_PS_TCP) == 0, let id else {
            rdma_destroy_event_channel(channel)
            throw RDMAError("rdma_create_id: errno \(errno)")
        }
        var made = false
        defer {
            if !made {
                rdma_destroy_id(id)
                rdma_destroy_event_channel(channel)
            }
        }
        var sin = try RDMAConnection.socketAddress(address, port)
        let resolved = withUnsafeMutablePointer(to: &sin) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_resolve_addr(id, nil, $0, timeoutMillis) }
        }
        guard resolved == 0 else { throw RDMAError("rdma_resolve_addr \(address): errno \(errno)") }
        _ = try RDMAConnection.expect(channel, RDMA_CM_EVENT_ADDR_RESOLVED, timeoutMillis)
        guard rdma_resolve_route(id, timeoutMillis) == 0 else { throw RDMAError("rdma_resolve_route \(address): errno \(errno)") }
        _ = try RDMAConnection.expect(channel, RDMA_CM_EVENT_ROUTE_RESOLVED, timeoutMillis)
        // The GID is this side's: the local address the route goes out of.
        let local = RDMAConnection.localAddress(id) ?? address
        let (device, qp) = try RDMAConnection.makeQueuePair(id, address: local, depth: depth)
        var param = rdma_conn_param()
        param.responder_resources = 1
        param.initiator_depth = 1
        param.retry_count = 7
        param.rnr_retry_count = 7
        let outcome = sent.withUnsafeBytes { raw -> Result<[UInt8], RDMAError> in
            param.private_data = raw.baseAddress
            param.private_data_len = UInt8(min(raw.count, 56))
            guard rdma_connect(id, &param) == 0 else { return .failure(RDMAError("rdma_connect \(address):\(port): errno \(errno)")) }
            return Result { () throws(RDMAError) -> [UInt8] in try RDMAConnection.expect(channel, RDMA_CM_EVENT_ESTABLISHED, timeoutMillis) }
        }
        let peer: [UInt8]
        do { peer = try outcome.get() } catch {
            qp.close()
            made = true  // the queue pair's close destroyed the id
            rdma_destroy_event_channel(channel)
            throw error
        }
        made = true
        return RDMAConnection(queuePair: qp, device: device, peerData: unframed(peer), channel: channel)
    }

    /// The IPv4 address an id is bound to, dotted.
    static func localAddress(_ id: UnsafeMutablePointer<rdma_cm_id>) -> String? {
        guard let sa = rdma_get_local_addr(id), sa.pointee.sa_family == sa_family_t(AF_INET) else { return nil }
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
            var addr = sin.pointee.sin_addr
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            guard inet_ntop(AF_INET, &addr, &text, socklen_t(text.count)) != nil else { return nil }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// A protection domain, a completion queue and a queue pair on the id's device.
    static func makeQueuePair(_ id: UnsafeMutablePointer<rdma_cm_id>, address: String, depth: Int,
                              on known: VerbsRDMADevice? = nil) throws(RDMAError) -> (VerbsRDMADevice, VerbsQueuePair) {
        guard let ctx = id.pointee.verbs else { throw RDMAError("rdma_cm resolved \(address) to no device") }
        let device: VerbsRDMADevice
        if let known {
            device = known
        } else {
            device = try VerbsRDMADevice(rawContext: OpaquePointer(ctx), port: id.pointee.port_num, gidAddress: address)
        }
        guard device.rawContext == OpaquePointer(ctx) else { throw RDMAError("the connection to \(address) is on another device than its listener's") }
        var attr = ibv_qp_init_attr()
        let cq = try withUnsafeMutableBytes(of: &attr) { (raw) throws(RDMAError) -> OpaquePointer in
            try VerbsQueuePair.completionQueue(rawContext: device.rawContext, depth: depth, attributes: raw.baseAddress!)
        }
        guard rdma_create_qp(id, UnsafeMutablePointer<ibv_pd>(device.rawPD), &attr) == 0, let qp = id.pointee.qp else {
            VerbsQueuePair.destroyCompletionQueue(cq)
            throw RDMAError("rdma_create_qp: errno \(errno)")
        }
        let pair = VerbsQueuePair(device: device, rawQP: OpaquePointer(qp), rawCQ: cq) {
            rdma_disconnect(id)
            rdma_destroy_qp(id)
            VerbsQueuePair.destroyCompletionQueue(cq)
            rdma_destroy_id(id)
        }
        return (device, pair)
    }

    static func socketAddress(_ address: String, _ port: UInt16) throws(RDMAError) -> sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &sin.sin_addr) == 1 else { throw RDMAError("'\(address)' is not an IPv4 address") }
        return sin
    }

    /// Waits (up to `timeoutMillis`) for the next event on `channel`, which must be `wanted`;
    /// with `of`, events of other ids are passed over (a connect request among them is
    /// refused). Returns the private data it carries (a connect request's, or an established
    /// connection's); a connect request's new id goes to `request`.
    static func expect(_ channel: UnsafeMutablePointer<rdma_event_channel>, _ wanted: rdma_cm_event_type, _ timeoutMillis: Int32,
                       of: UnsafeMutablePointer<rdma_cm_id>? = nil,
                       request: UnsafeMutablePointer<UnsafeMutablePointer<rdma_cm_id>?>? = nil) throws(RDMAError) -> [UInt8] {
        let deadline = monotonicNanos() + UInt64(max(0, timeoutMillis)) * 1_000_000
        while true {
            let now = monotonicNanos()
            let left = Int32(clamping: now < deadline ? (deadline - now) / 1_000_000 : 0)
            var pfd = pollfd(fd: channel.pointee.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, left) == 1 else {
                throw RDMAError("rdma_cm: no \(String(cString: rdma_event_str(wanted))) in \(timeoutMillis) ms")
            }
            var event: UnsafeMutablePointer<rdma_cm_event>?
            guard rdma_get_cm_event(channel, &event) == 0, let event else { throw RDMAError("rdma_get_cm_event: errno \(errno)") }
            let got = event.pointee.event
            if let of, event.pointee.id != of {
                // Another id's event (a second peer asking, say): not this wait's.
                let stray = event.pointee.id
                rdma_ack_cm_event(event)
                if got == RDMA_CM_EVENT_CONNECT_REQUEST, let stray {
                    rdma_reject(stray, nil, 0)
                    rdma_destroy_id(stray)
                }
                continue
            }
            defer { rdma_ack_cm_event(event) }
            guard got == wanted else {
                throw RDMAError("rdma_cm: \(String(cString: rdma_event_str(got))) (status \(event.pointee.status)) where \(String(cString: rdma_event_str(wanted))) was expected")
            }
            request?.pointee = event.pointee.id
            let conn = event.pointee.param.conn
            guard let data = conn.private_data, conn.private_data_len > 0 else { return [] }
            return Array(UnsafeRawBufferPointer(start: data, count: Int(conn.private_data_len)))
        }
    }
}

/// Waits for peers on an IPv4 address (port 0: one is picked, see `port`).
public final class RDMAListener: @unchecked Sendable {
    private let channel: UnsafeMutablePointer<rdma_event_channel>
    private let id: UnsafeMutablePointer<rdma_cm_id>
    public let address: String
    public let port: UInt16
    /// The device the address is on: memory a peer may write to is registered with it before
    /// `accept`, so its address and rkey can go in the handshake.
    public let device: VerbsRDMADevice

    public init(address: String, port: UInt16 = 0) throws(RDMAError) {
        guard let channel = rdma_create_event_channel() else { throw RDMAError("rdma_cm: no event channel (errno \(errno)): no RDMA device?") }
        var id: UnsafeMutablePointer<rdma_cm_id>?
        guard rdma_create_id(channel, &id, nil, RDMA_PS_TCP) == 0, let id else {
            rdma_destroy_event_channel(channel)
            throw RDMAError("rdma_create_id: errno \(errno)")
        }
        do throws(RDMAError) {
            var sin = try RDMAConnection.socketAddress(address, port)
            let bound = withUnsafeMutablePointer(to: &sin) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { rdma_bind_addr(id, $0) } }
            guard bound == 0 else { throw RDMAError("rdma_bind_addr \(address):\(port): errno \(errno)") }
            guard rdma_listen(id, 8) == 0 else { throw RDMAError("rdma_listen: errno \(errno)") }
            guard let ctx = id.pointee.verbs else { throw RDMAError("\(address) is not the address of an RDMA device") }
            device = try VerbsRDMADevice(rawContext: OpaquePointer(ctx), port: id.pointee.port_num, gidAddress: address)
        } catch {
            rdma_destroy_id(id)
            rdma_destroy_event_channel(channel)
            throw error
        }
        self.channel = channel
        self.id = id
        self.address = address
        self.port = UInt16(bigEndian: rdma_get_src_port(id))
    }

    /// Accepts the next peer, answering its handshake with `data` (at most 56 bytes).
    public func accept(depth: Int, data: [UInt8], timeoutMillis: Int32 = 5000) throws(RDMAError) -> RDMAConnection {
        let sent = try RDMAConnection.framed(data)
        var request: UnsafeMutablePointer<rdma_cm_id>?
        let peer = try RDMAConnection.expect(channel, RDMA_CM_EVENT_CONNECT_REQUEST, timeoutMillis, request: &request)
        guard let child = request else { throw RDMAError("rdma_cm: a connect request without an id") }
        let device: VerbsRDMADevice
        let qp: VerbsQueuePair
        do throws(RDMAError) { (device, qp) = try RDMAConnection.makeQueuePair(child, address: address, depth: depth, on: self.device) } catch {
            rdma_reject(child, nil, 0)
            rdma_destroy_id(child)
            throw error
        }
        var param = rdma_conn_param()
        param.responder_resources = 1
        param.initiator_depth = 1
        param.rnr_retry_count = 7
        let accepted = sent.withUnsafeBytes { raw -> Bool in
            param.private_data = raw.baseAddress
            param.private_data_len = UInt8(min(raw.count, 56))
            return rdma_accept(child, &param) == 0
        }
        guard accepted else {
            let e = errno
            qp.close()
            throw RDMAError("rdma_accept: errno \(e)")
        }
        do throws(RDMAError) { _ = try RDMAConnection.expect(channel, RDMA_CM_EVENT_ESTABLISHED, timeoutMillis, of: child) } catch {
            qp.close()
            throw error
        }
        // The connection's own events (a disconnect) go to a channel of its own, which outlives
        // the listener's.
        guard let own = rdma_create_event_channel(), rdma_migrate_id(child, own) == 0 else {
            qp.close()
            throw RDMAError("rdma_migrate_id: errno \(errno)")
        }
        return RDMAConnection(queuePair: qp, device: device, peerData: RDMAConnection.unframed(peer), channel: own)
    }

    private var closed = false

    /// Stops listening (connections already accepted stay up).
    public func close() {
        guard !closed else { return }
        closed = true
        rdma_destroy_id(id)
        rdma_destroy_event_channel(channel)
    }
}
