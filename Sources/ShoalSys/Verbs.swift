#if canImport(Glibc)
import Glibc
#endif
import ShoalCore
internal import CShoalVerbs

/// An RDMA device as libibverbs lists it.
public struct VerbsDeviceInfo: Sendable {
    public var name: String
    public var opened: Bool
}

public enum Verbs {
    /// Loads libibverbs (once; it is opened at run time, so a host without rdma-core runs
    /// everything but RDMA): throws why where it cannot be loaded.
    public static func load() throws(RDMAError) {
        var error = [CChar](repeating: 0, count: 256)
        guard shoal_verbs_load(&error, error.count) == 0 else {
            throw RDMAError(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    /// The RDMA devices on this host; empty where there are none (libibverbs returns nil then).
    public static func devices() -> [VerbsDeviceInfo] {
        guard (try? load()) != nil else { return [] }
        var count: Int32 = 0
        guard let list = shoal_ibv_get_device_list(&count) else { return [] }
        defer { shoal_ibv_free_device_list(list) }
        var out: [VerbsDeviceInfo] = []
        for i in 0..<Int(count) {
            guard let dev = list[i] else { continue }
            let name = String(cString: shoal_ibv_get_device_name(dev))
            var opened = false
            if let ctx = shoal_ibv_open_device(dev) {
                opened = true
                shoal_ibv_close_device(ctx)
            }
            out.append(VerbsDeviceInfo(name: name, opened: opened))
        }
        return out
    }
}

/// A real RDMA device through libibverbs (port 1): a protection domain, memory registered
/// once per buffer, and reliable-connected queue pairs addressed by a RoCEv2 GID chosen by
/// address (an IPv4-mapped one: `gidAddress` when given, else the first).
public final class VerbsRDMADevice: RDMADevice, @unchecked Sendable {
    public let name: String
    public var isSimulated: Bool { false }
    let context: UnsafeMutablePointer<ibv_context>
    let pd: UnsafeMutablePointer<ibv_pd>
    /// The device's context and protection domain, for rdma_cm in the worker's system layer.
    package var rawContext: OpaquePointer { OpaquePointer(context) }
    package var rawPD: OpaquePointer { OpaquePointer(pd) }
    let port: UInt8
    public let gidIndex: Int
    public let gid: [UInt8]
    let mtu: ibv_mtu

    /// Opens device `name` (nil: the first one), port 1.
    public convenience init(name wanted: String? = nil, gidAddress: String? = nil) throws(RDMAError) {
        try Verbs.load()
        var count: Int32 = 0
        guard let list = shoal_ibv_get_device_list(&count), count > 0 else { throw RDMAError("no RDMA device found on this host (libibverbs lists none)") }
        defer { shoal_ibv_free_device_list(list) }
        let devices = (0..<Int(count)).compactMap { list[$0] }
        guard let dev = devices.first(where: { wanted == nil || String(cString: shoal_ibv_get_device_name($0)) == wanted }) else {
            throw RDMAError("no RDMA device named \(wanted ?? "")")
        }
        guard let ctx = shoal_ibv_open_device(dev) else { throw RDMAError("cannot open \(String(cString: shoal_ibv_get_device_name(dev))): errno \(errno)") }
        do { try self.init(context: ctx, port: 1, gidAddress: gidAddress, ownsContext: true) } catch {
            shoal_ibv_close_device(ctx)
            throw error
        }
    }

    /// Whether `context` is this device's to close (rdma_cm owns the ones it opens).
    private let ownsContext: Bool

    /// The device of a context librdmacm opened (a connection's `rdma_cm_id.verbs`): a
    /// protection domain of its own on it, the GID of `gidAddress` (the connection's address).
    package convenience init(rawContext: OpaquePointer, port: UInt8, gidAddress: String?) throws(RDMAError) {
        try Verbs.load()
        try self.init(context: UnsafeMutablePointer<ibv_context>(rawContext), port: port, gidAddress: gidAddress, ownsContext: false)
    }

    /// Port `port` of `ctx` (active), its GID for `gidAddress` and a protection domain.
    private init(context ctx: UnsafeMutablePointer<ibv_context>, port: UInt8, gidAddress: String?, ownsContext: Bool) throws(RDMAError) {
        let devName = String(cString: shoal_ibv_get_device_name(ctx.pointee.device))
        var portAttr = ibv_port_attr()
        guard shoal_ibv_query_port(ctx, port, &portAttr) == 0 else { throw RDMAError("cannot query port \(port) of \(devName)") }
        guard portAttr.state == IBV_PORT_ACTIVE else {
            throw RDMAError("port \(port) of \(devName) is not active (state \(portAttr.state.rawValue))")
        }
        // The GID: RoCEv2, IPv4-mapped, matching the address asked for.
        guard let (index, gidBytes) = VerbsRDMADevice.roceV2GID(ctx, port: port, portAttr: portAttr, address: gidAddress) else {
            throw RDMAError("\(devName) has no RoCEv2 IPv4 GID\(gidAddress.map { " for \($0)" } ?? "") on port \(port)")
        }
        guard let pd = shoal_ibv_alloc_pd(ctx) else { throw RDMAError("cannot allocate a protection domain on \(devName)") }
        name = devName
        context = ctx
        self.pd = pd
        self.port = port
        gidIndex = index
        gid = gidBytes
        mtu = portAttr.active_mtu
        self.ownsContext = ownsContext
    }

    /// Port `port`'s first RoCEv2, IPv4-mapped GID (the one of `address`, when given).
    static func roceV2GID(_ ctx: UnsafeMutablePointer<ibv_context>, port: UInt8, portAttr: ibv_port_attr, address: String?) -> (Int, [UInt8])? {
        for i in 0..<Int(portAttr.gid_tbl_len) {
            var entry = ibv_gid_entry()
            guard shoal_ibv_query_gid_ex(ctx, UInt32(port), UInt32(i), &entry) == 0 else { continue }
            let raw = withUnsafeBytes(of: entry.gid.raw) { Array($0) }
            guard entry.gid_type == IBV_GID_TYPE_ROCE_V2.rawValue, raw[0..<10].allSatisfy({ $0 == 0 }), raw[10] == 0xff, raw[11] == 0xff else { continue }
            if let address, RDMAQueuePairAddress.format(raw) != address { continue }
            return (i, raw)
        }
        return nil
    }

    deinit {
        shoal_ibv_dealloc_pd(pd)
        if ownsContext { shoal_ibv_close_device(context) }
    }

    public func register(_ base: UnsafeMutableRawPointer, length: Int) throws(RDMAError) -> RDMAMemoryRegion {
        // Remote writes only: no peer reads memory of this side (a worker's pool included).
        let access = Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue)
        guard let mr = shoal_ibv_reg_mr(pd, base, length, access) else {
            let e = errno
            throw RDMAError("cannot register \(length) bytes with \(name): errno \(e)\(e == ENOMEM ? " (the locked-memory limit, RLIMIT_MEMLOCK, is too low)" : "")")
        }
        return RDMAMemoryRegion(address: UInt64(UInt(bitPattern: base)), length: length, lkey: mr.pointee.lkey, rkey: mr.pointee.rkey,
                                handle: UInt(bitPattern: mr))
    }

    public func deregister(_ region: RDMAMemoryRegion) {
        guard let mr = UnsafeMutablePointer<ibv_mr>(bitPattern: region.handle) else { return }
        shoal_ibv_dereg_mr(mr)
    }

    public func makeQueuePair(depth: Int, acceptsWrites: Bool) throws(RDMAError) -> any RDMAQueuePairDriver {
        try VerbsQueuePair(device: self, depth: depth, acceptsWrites: acceptsWrites)
    }
}

/// A reliable-connected queue pair of a `VerbsRDMADevice`, with a completion queue of its own.
package final class VerbsQueuePair: RDMAQueuePairDriver {
    let device: VerbsRDMADevice
    let cq: UnsafeMutablePointer<ibv_cq>
    let qp: UnsafeMutablePointer<ibv_qp>
    private var polled: UnsafeMutablePointer<ibv_wc>
    private let pollCapacity = 64

    /// A completion queue of `depth` on `context`, and the attributes of a reliable-connected
    /// queue pair of that depth using it for both directions (only signalled sends complete).
    /// The same for rdma_cm, which creates the queue pair itself: the completion queue, and the
    /// attributes written to `attributes` (an `ibv_qp_init_attr`).
    package static func completionQueue(rawContext: OpaquePointer, depth: Int, attributes: UnsafeMutableRawPointer) throws(RDMAError) -> OpaquePointer {
        let (cq, attr) = try completionQueue(UnsafeMutablePointer<ibv_context>(rawContext), depth: depth)
        attributes.storeBytes(of: attr, as: ibv_qp_init_attr.self)
        return OpaquePointer(cq)
    }

    package static func destroyCompletionQueue(_ cq: OpaquePointer) { _ = shoal_ibv_destroy_cq(UnsafeMutablePointer<ibv_cq>(cq)) }

    static func completionQueue(_ context: UnsafeMutablePointer<ibv_context>, depth: Int) throws(RDMAError)
        -> (UnsafeMutablePointer<ibv_cq>, ibv_qp_init_attr) {
        guard let cq = shoal_ibv_create_cq(context, Int32(depth)) else { throw RDMAError("cannot create a completion queue of \(depth)") }
        var attr = ibv_qp_init_attr()
        attr.send_cq = cq
        attr.recv_cq = cq
        attr.cap.max_send_wr = UInt32(depth)
        attr.cap.max_recv_wr = 16
        attr.cap.max_send_sge = 1
        attr.cap.max_recv_sge = 1
        attr.qp_type = IBV_QPT_RC
        attr.sq_sig_all = 0
        return (cq, attr)
    }

    /// This side's first packet sequence number.
    let psn = RDMAQueuePairAddress.randomPSN()

    init(device: VerbsRDMADevice, depth: Int, acceptsWrites: Bool) throws(RDMAError) {
        self.device = device
        var (cq, attr) = try VerbsQueuePair.completionQueue(device.context, depth: depth)
        guard let qp = shoal_ibv_create_qp(device.pd, &attr) else {
            shoal_ibv_destroy_cq(cq)
            throw RDMAError("cannot create a queue pair of \(depth) on \(device.name): errno \(errno)")
        }
        self.cq = cq
        self.qp = qp
        polled = .allocate(capacity: pollCapacity)
        var initAttr = ibv_qp_attr()
        initAttr.qp_state = IBV_QPS_INIT
        initAttr.pkey_index = 0
        initAttr.port_num = device.port
        // A peer may write through it only where this side reads (the peer serves); never read.
        initAttr.qp_access_flags = acceptsWrites ? IBV_ACCESS_REMOTE_WRITE.rawValue : 0
        let mask = IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue | IBV_QP_ACCESS_FLAGS.rawValue
        let rc = shoal_ibv_modify_qp(qp, &initAttr, Int32(mask))
        guard rc == 0 else {
            close()
            throw RDMAError("cannot move a queue pair to INIT: errno \(rc)")
        }
    }

    /// Set when rdma_cm made the queue pair (and moves it through its states): what closes it
    /// (disconnect, then rdma_cm's own teardown).
    private var closeByCM: (() -> Void)?

    /// A queue pair rdma_cm created (`qp`, its completion queue `cq`), already connected;
    /// `close` runs `closeByCM`, which tears it down.
    package init(device: VerbsRDMADevice, rawQP: OpaquePointer, rawCQ: OpaquePointer, closeByCM: @escaping () -> Void) {
        self.device = device
        cq = UnsafeMutablePointer<ibv_cq>(rawCQ)
        qp = UnsafeMutablePointer<ibv_qp>(rawQP)
        self.closeByCM = closeByCM
        polled = .allocate(capacity: pollCapacity)
    }

    deinit { polled.deallocate() }

    package var address: RDMAQueuePairAddress { RDMAQueuePairAddress(queuePair: qp.pointee.qp_num, gid: device.gid, psn: psn) }

    package func connect(to peer: RDMAQueuePairAddress) throws(RDMAError) {
        guard closeByCM == nil else { throw RDMAError("this queue pair was connected by rdma_cm") }
        guard peer.gid.count == 16 else { throw RDMAError("a GID is 16 bytes, not \(peer.gid.count)") }
        var rtr = ibv_qp_attr()
        rtr.qp_state = IBV_QPS_RTR
        rtr.path_mtu = device.mtu
        rtr.dest_qp_num = peer.queuePair
        rtr.rq_psn = peer.psn
        rtr.max_dest_rd_atomic = 0  // no RDMA READs or atomics are answered
        rtr.min_rnr_timer = 12
        rtr.ah_attr.is_global = 1
        rtr.ah_attr.port_num = device.port
        rtr.ah_attr.grh.sgid_index = UInt8(device.gidIndex)
        rtr.ah_attr.grh.hop_limit = 64
        withUnsafeMutableBytes(of: &rtr.ah_attr.grh.dgid.raw) { $0.copyBytes(from: peer.gid) }
        var mask = IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            | IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
        var rc = shoal_ibv_modify_qp(qp, &rtr, Int32(mask))
        guard rc == 0 else { throw RDMAError("cannot move the queue pair to RTR (peer \(peer)): errno \(rc)") }
        var rts = ibv_qp_attr()
        rts.qp_state = IBV_QPS_RTS
        rts.timeout = 14
        rts.retry_cnt = 7
        rts.rnr_retry = 7
        rts.sq_psn = psn
        rts.max_rd_atomic = 0
        mask = IBV_QP_STATE.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue | IBV_QP_RNR_RETRY.rawValue
            | IBV_QP_SQ_PSN.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
        rc = shoal_ibv_modify_qp(qp, &rts, Int32(mask))
        guard rc == 0 else { throw RDMAError("cannot move the queue pair to RTS: errno \(rc)") }
    }

    package func post(_ writes: [RDMAWrite], id: UInt64) -> (posted: Int, error: RDMAError?) {
        let n = writes.count
        guard n > 0 else { return (0, nil) }
        let sges = UnsafeMutablePointer<ibv_sge>.allocate(capacity: n)
        let wrs = UnsafeMutablePointer<ibv_send_wr>.allocate(capacity: n)
        defer {
            sges.deallocate()
            wrs.deallocate()
        }
        for (i, w) in writes.enumerated() {
            sges[i] = ibv_sge(addr: w.local, length: UInt32(w.length), lkey: w.lkey)
            var wr = ibv_send_wr()
            wr.wr_id = RDMACompletion.workRequestID(chain: id, index: i)
            wr.sg_list = sges + i
            wr.num_sge = 1
            wr.opcode = IBV_WR_RDMA_WRITE
            wr.send_flags = i == n - 1 ? IBV_SEND_SIGNALED.rawValue : 0
            wr.wr.rdma.remote_addr = w.remoteAddress
            wr.wr.rdma.rkey = w.rkey
            wr.next = i == n - 1 ? nil : wrs + i + 1
            (wrs + i).initialize(to: wr)
        }
        var bad: UnsafeMutablePointer<ibv_send_wr>?
        let rc = shoal_ibv_post_send(qp, wrs, &bad)
        guard rc != 0 else { return (n, nil) }
        let taken = bad.map { $0 - wrs } ?? 0
        return (max(0, min(n, taken)), RDMAError("ibv_post_send: errno \(rc)"))
    }

    package func poll(max: Int) throws(RDMAError) -> [RDMACompletion] {
        let n = shoal_ibv_poll_cq(cq, Int32(min(max, pollCapacity)), polled)
        guard n >= 0 else { throw RDMAError("ibv_poll_cq failed (\(n))") }
        return (0..<Int(n)).map { i in
            let wc = polled[i]
            let status: RDMACompletion.Status
            switch wc.status {
            case IBV_WC_SUCCESS: status = .success
            case IBV_WC_WR_FLUSH_ERR: status = .flushed
            default: status = .failed(String(cString: shoal_ibv_wc_status_str(wc.status)))
            }
            return RDMACompletion(workRequestID: wc.wr_id, status: status)
        }
    }

    package func moveToError() {
        var attr = ibv_qp_attr()
        attr.qp_state = IBV_QPS_ERR
        _ = shoal_ibv_modify_qp(qp, &attr, Int32(IBV_QP_STATE.rawValue))
    }

    private var closed = false

    package func close() {
        guard !closed else { return }
        closed = true
        if let closeByCM {
            self.closeByCM = nil
            closeByCM()
            return
        }
        shoal_ibv_destroy_qp(qp)
        shoal_ibv_destroy_cq(cq)
    }
}
