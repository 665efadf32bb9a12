// swift-tools-version: 6.1
// Micro-benchmarks of Shoal's hot parts with ordo-one/benchmark, in a package of their own so the
// main build stays lean. Run: cd Perf/Micro && swift package benchmark
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone is called.
let shoal = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let shoalIdentity = shoal.lastPathComponent.lowercased()

let package = Package(
    name: "ShoalMicro",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "ShoalMicro",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ShoalEngine", package: shoalIdentity),
            ],
            path: "Benchmarks/ShoalMicro",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
