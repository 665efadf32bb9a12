#if canImport(Glibc)
import Glibc
#endif
import ShoalSys
internal import CNuma

/// NUMA placement (libnuma): an RDMA device's node, memory bound to a node before it is first
/// touched, and threads run on a node's CPUs. On a host with one node (or none NUMA-aware) all
/// of it is a no-op that says so.
public enum NUMA {
    /// Whether the kernel has NUMA and how many nodes (1 where it has not).
    public static var nodeCount: Int { numa_available() < 0 ? 1 : Int(numa_max_node()) + 1 }

    /// The NUMA node of RDMA device `name` (`/sys/class/infiniband/NAME/device/numa_node`); nil
    /// where the kernel does not say (a virtual device like rxe: -1, or no such file).
    public static func node(ofRDMADevice name: String, sysfs: String = "/sys") -> Int? {
        guard !name.contains("/"), let text = try? FileSystem.readFile("\(sysfs)/class/infiniband/\(name)/device/numa_node"),
              let word = String(decoding: text, as: UTF8.self).split(whereSeparator: \.isWhitespace).first,
              let node = Int(word), node >= 0 else { return nil }
        return node
    }

    /// Binds `length` bytes at `p` (not yet touched) to `node`, so their pages come from it.
    /// False where there is no NUMA or no such node.
    @discardableResult
    public static func bind(_ p: UnsafeMutableRawPointer, length: Int, node: Int) -> Bool {
        guard numa_available() >= 0, node >= 0, node < nodeCount else { return false }
        numa_tonode_memory(p, length, Int32(node))
        return true
    }

    /// Runs the calling thread on `node`'s CPUs. False where it cannot.
    @discardableResult
    public static func runOn(node: Int) -> Bool {
        guard numa_available() >= 0, node >= 0, node < nodeCount else { return false }
        return numa_run_on_node(Int32(node)) == 0
    }
}
