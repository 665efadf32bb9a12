// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Shoal",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "shoal", targets: ["shoal"]),
        .library(name: "ShoalClient", targets: ["ShoalClient"]),
        // libshoal: the C ABI (Sources/CShoalABI/include/shoal.h) as one shared library; built by
        // Tools/libshoal.sh with the Swift runtime linked in.
        .library(name: "shoalc", type: .dynamic, targets: ["ShoalCABI"]),
        // For Perf/Micro's benchmarks of the parts below the client.
        .library(name: "ShoalEngine", targets: ["ShoalCore", "ShoalSys", "ShoalIO", "ShoalStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System libraries: module maps only.
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CVerbs", pkgConfig: "libibverbs", providers: [.apt(["libibverbs-dev"])]),
        .systemLibrary(name: "CRDMACM", pkgConfig: "librdmacm", providers: [.apt(["librdmacm-dev"])]),
        .systemLibrary(name: "CNuma", providers: [.apt(["libnuma-dev"])]),
        // libssl and libcrypto: TLS on the data plane, AES-GCM frame tags.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // The only C: what Swift cannot call (variadic functions, macros) and CRC32C. CShoalShims
        // needs libc only; CShoalTLS wraps OpenSSL's macros; CShoalCurl loads libcurl at run time
        // (its -dev package gives the header: libcurl4-openssl-dev), so nothing links it.
        .target(name: "CShoalShims"),
        .target(name: "CShoalTLS", dependencies: ["COpenSSL", "CShoalShims"]),
        .target(name: "CShoalCurl"),
        // libibverbs loaded at run time the same way (its -dev package gives the header), so a
        // client links no verbs and runs on a host without rdma-core.
        .target(name: "CShoalVerbs"),
        // libshoal's public header (no code of its own).
        .target(name: "CShoalABI"),

        .target(name: "ShoalCore", dependencies: ["CShoalShims"]),
        // The system layer a client needs: POSIX (sockets, poll, threads, time, files), OpenSSL
        // for frame tags and TLS, libcurl and libibverbs when loaded (RDMA's interface, the verbs
        // device and the simulated one). It links no io_uring and no verbs.
        .target(name: "ShoalSys", dependencies: ["COpenSSL", "CShoalShims", "CShoalTLS", "CShoalCurl", "CShoalVerbs", "ShoalCore"]),
        // The worker's own system layer: io_uring, the registered buffer pool, rdma_cm, NUMA.
        .target(name: "ShoalIO", dependencies: ["CURing", "CVerbs", "CRDMACM", "CNuma", "CShoalShims", "ShoalSys", "ShoalCore"]),
        .target(name: "ShoalObjectStore", dependencies: ["ShoalSys", "ShoalCore"]),
        .target(name: "ShoalStore", dependencies: ["ShoalIO", "ShoalSys", "ShoalCore", .product(name: "Logging", package: "swift-log")]),
        .target(name: "ShoalTransport", dependencies: ["ShoalSys", "ShoalCore"]),
        .target(
            name: "ShoalWorker",
            dependencies: [
                "ShoalIO", "ShoalSys", "ShoalCore", "ShoalStore", "ShoalObjectStore", "ShoalTransport", "ShoalClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]),
        .target(name: "ShoalClient", dependencies: ["ShoalSys", "ShoalCore", "ShoalTransport", "ShoalObjectStore"]),
        .target(name: "ShoalCABI", dependencies: ["CShoalABI", "ShoalClient", "ShoalSys", "ShoalCore"]),
        .executableTarget(
            name: "shoal",
            dependencies: [
                "ShoalWorker", "ShoalClient", "ShoalTransport", "ShoalObjectStore", "ShoalStore", "ShoalCore", "ShoalSys", "ShoalIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]),

        .target(
            name: "ShoalTestSupport",
            dependencies: ["ShoalWorker", "ShoalClient", "ShoalObjectStore", "ShoalStore", "ShoalSys", "ShoalIO", "ShoalCore", .product(name: "Logging", package: "swift-log")],
            path: "Tests/ShoalTestSupport"),
        .testTarget(name: "ShoalCoreTests", dependencies: ["ShoalCore"]),
        .testTarget(name: "ShoalSysTests", dependencies: ["ShoalSys", "ShoalIO", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(name: "ShoalStoreTests", dependencies: ["ShoalStore", "ShoalSys", "ShoalIO", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(name: "ShoalObjectStoreTests", dependencies: ["ShoalObjectStore", "ShoalSys", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(
            name: "ShoalIntegrationTests",
            dependencies: ["ShoalWorker", "ShoalClient", "ShoalObjectStore", "ShoalStore", "ShoalTransport", "ShoalSys", "ShoalIO", "ShoalCore", "ShoalTestSupport",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
    ]
)
