#if canImport(Glibc)
import Glibc
#endif
import ShoalSys
internal import CVerbs

/// An RDMA device as libibverbs lists it.
public struct VerbsDeviceInfo: Sendable {
    public var name: String
    public var opened: Bool
}

public enum Verbs {
    /// The RDMA devices on this host; empty where there are none (libibverbs returns nil then).
    public static func devices() -> [VerbsDeviceInfo] {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else { return [] }
        defer { ibv_free_device_list(list) }
        var out: [VerbsDeviceInfo] = []
        for i in 0..<Int(count) {
            guard let dev = list[i] else { continue }
            let name = String(cString: ibv_get_device_name(dev))
            var opened = false
            if let ctx = ibv_open_device(dev) {
                opened = true
                ibv_close_device(ctx)
            }
            out.append(VerbsDeviceInfo(name: name, opened: opened))
        }
        return out
    }
}
