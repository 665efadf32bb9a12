#if canImport(Glibc)
import Glibc
#endif
import Testing
import ShoalCore
@testable import ShoalIO
@testable import ShoalSys
import ShoalTestSupport

/// NUMA placement of the worker's RDMA buffers: the device's node from sysfs, and the pool's
/// pages bound to it before they are touched.
@Suite struct NUMATests {
    @Test func anRDMADevicesNodeComesFromSysfs() throws {
        let root = makeTemporaryDirectory("sysfs")
        func device(_ name: String, _ text: String) throws {
            try FileSystem.createDirectories(root + "/class/infiniband/\(name)/device")
            try FileSystem.writeFile(root + "/class/infiniband/\(name)/device/numa_node", Array(text.utf8))
        }
        try device("mlx5_0", "1\n")
        try device("rxe0", "-1\n")
        try device("odd", "node one\n")
        #expect(NUMA.node(ofRDMADevice: "mlx5_0", sysfs: root) == 1)
        #expect(NUMA.node(ofRDMADevice: "rxe0", sysfs: root) == nil, "a virtual device says -1: no node")
        #expect(NUMA.node(ofRDMADevice: "odd", sysfs: root) == nil)
        #expect(NUMA.node(ofRDMADevice: "missing", sysfs: root) == nil)
        #expect(NUMA.node(ofRDMADevice: "../../etc", sysfs: root) == nil)
    }

    @Test func thePoolIsBoundToTheNodeAskedFor() throws {
        let pool = try BufferPool(bufferSize: 64 << 10, count: 4, numaNode: 0)
        // Node 0 exists wherever the kernel has NUMA; without it, nothing is bound and the pool works the same.
        #expect(pool.numaNode == (numaAvailable() ? 0 : nil))
        let far = try BufferPool(bufferSize: 64 << 10, count: 4, numaNode: NUMA.nodeCount + 7)
        #expect(far.numaNode == nil, "no such node: not bound")
        #expect(NUMA.runOn(node: NUMA.nodeCount + 7) == false)
    }

    func numaAvailable() -> Bool { FileSystem.exists("/sys/devices/system/node/node0") }
}
