// A test case with an unpaired store and its Volume in a directory of its own, as `twinfs mount` opens them.
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

class VolumeTestCase: XCTestCase {
    var dir = ""
    var volume: Volume?
    let user = Caller(uid: 1000, gid: 1000)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("volume-\(UUID().uuidString)").path
        try Store.create(at: dir + "/store", nodeName: "a", trackBytes: 65536)
        volume = Volume(store: try Store.open(at: dir + "/store"))
    }

    /// Writes `count` bytes of `byte` at `offset` through the volume, as the FUSE write path does.
    func write(_ v: Volume, _ handle: UInt64, at offset: some BinaryInteger, _ count: Int = 4096, byte: UInt8 = 7) throws {
        let bytes = [UInt8](repeating: byte, count: count)
        _ = try v.withWriteTarget(handle: handle, offset: UInt64(offset), count: count, caller: user) { fd, position in
            bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(position)) }
        }
    }

    override func tearDownWithError() throws {
        try? volume?.shutDown()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
