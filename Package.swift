// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Shoal",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "shoal", targets: ["shoal"]),
        .library(name: "ShoalClient", targets: ["ShoalClient"]),
        // For Perf/Micro's benchmarks of the parts below the client.
        .library(name: "ShoalEngine", targets: ["ShoalCore", "ShoalSys", "ShoalStore"]),
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
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // libssl and libcrypto: TLS on the data plane, AES-GCM frame tags.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // The only C: what Swift cannot call (variadic functions, macros) and CRC32C.
        .target(name: "CShoalShims", dependencies: ["CCurl", "COpenSSL"]),

        .target(name: "ShoalCore", dependencies: ["CShoalShims"]),
        .target(
            name: "ShoalSys",
            dependencies: ["CURing", "CVerbs", "CRDMACM", "CNuma", "CCurl", "COpenSSL", "CShoalShims", "ShoalCore"]),
        .target(name: "ShoalObjectStore", dependencies: ["ShoalSys", "ShoalCore"]),
        .target(name: "ShoalStore", dependencies: ["ShoalSys", "ShoalCore", .product(name: "Logging", package: "swift-log")]),
        .target(name: "ShoalTransport", dependencies: ["ShoalSys", "ShoalCore"]),
        .target(
            name: "ShoalWorker",
            dependencies: [
                "ShoalSys", "ShoalCore", "ShoalStore", "ShoalObjectStore", "ShoalTransport", "ShoalClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]),
        .target(name: "ShoalClient", dependencies: ["ShoalSys", "ShoalCore", "ShoalTransport", "ShoalObjectStore", "Yams"]),
        .executableTarget(
            name: "shoal",
            dependencies: [
                "ShoalWorker", "ShoalClient", "ShoalTransport", "ShoalObjectStore", "ShoalStore", "ShoalCore", "ShoalSys",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]),

        .target(
            name: "ShoalTestSupport",
            dependencies: ["ShoalWorker", "ShoalObjectStore", "ShoalStore", "ShoalSys", "ShoalCore", .product(name: "Logging", package: "swift-log")],
            path: "Tests/ShoalTestSupport"),
        .testTarget(name: "ShoalCoreTests", dependencies: ["ShoalCore"]),
        .testTarget(name: "ShoalSysTests", dependencies: ["ShoalSys", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(name: "ShoalStoreTests", dependencies: ["ShoalStore", "ShoalSys", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(name: "ShoalObjectStoreTests", dependencies: ["ShoalObjectStore", "ShoalSys", "ShoalCore", "ShoalTestSupport"]),
        .testTarget(
            name: "ShoalIntegrationTests",
            dependencies: ["ShoalWorker", "ShoalClient", "ShoalObjectStore", "ShoalStore", "ShoalTransport", "ShoalSys", "ShoalCore", "ShoalTestSupport",
                           .product(name: "Logging", package: "swift-log")]),
    ]
)
