// swift-tools-version:6.0
import PackageDescription

// Modules that sit on C callbacks and threads use the Swift 5 language mode; the pure
// protocol core and the simulator are strict Swift 6.
let swift5: [SwiftSetting] = [.swiftLanguageMode(.v5)]

let package = Package(
    name: "twinfs",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "twinfs", targets: ["twinfs"]),
        .executable(name: "twinfs-sim", targets: ["twinfs-sim"]),
        .executable(name: "twinfs-proxy", targets: ["twinfs-proxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "CLinuxShims"),
        // Release builds skip dynamic exclusivity checks in the core (its hot path is class-property access).
        .target(name: "MirrorCore", swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]),
        .target(name: "TwinStore", dependencies: ["CSQLite", "CLinuxShims", .product(name: "Crypto", package: "swift-crypto")], swiftSettings: swift5),
        .target(name: "TwinNode", dependencies: ["TwinStore", "CLinuxShims", "MirrorCore"], swiftSettings: swift5),
        .target(name: "TwinFUSE", dependencies: ["CFuse3", "CLinuxShims", "TwinNode", "TwinStore"], swiftSettings: swift5),
        .target(name: "TwinSim", dependencies: ["MirrorCore"]),
        .target(
            name: "PeerLink",
            dependencies: [
                "MirrorCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swift5),
        .executableTarget(
            name: "twinfs",
            dependencies: [
                "TwinFUSE", "TwinNode", "TwinStore", "PeerLink", "MirrorCore", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swift5),
        .executableTarget(
            name: "twinfs-sim",
            dependencies: ["TwinSim", "MirrorCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        // Throughput benchmark of the protocol core (not part of `swift test`): swift run -c release core-bench
        .executableTarget(name: "core-bench", dependencies: ["MirrorCore"], path: "Tests/Benchmarks/CoreThroughput"),
        .executableTarget(name: "twinfs-proxy", swiftSettings: swift5),
        .testTarget(name: "MirrorCoreTests", dependencies: ["MirrorCore"]),
        .testTarget(name: "TwinSimTests", dependencies: ["TwinSim", "MirrorCore"]),
        .testTarget(name: "PeerLinkTests", dependencies: ["PeerLink", "MirrorCore"], swiftSettings: swift5),
        .testTarget(name: "TwinStoreTests", dependencies: ["TwinStore"], swiftSettings: swift5),
        .testTarget(name: "TwinNodeTests", dependencies: ["TwinNode", "TwinStore", "MirrorCore"], swiftSettings: swift5),
        .testTarget(name: "TwinIntegrationTests", dependencies: ["TwinStore"], swiftSettings: swift5),
    ]
)
