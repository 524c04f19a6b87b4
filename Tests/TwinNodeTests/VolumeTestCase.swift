// A test case with an unpaired store and its Volume in a directory of its own, as `twinfs mount` opens them.
import Foundation
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

    override func tearDownWithError() throws {
        try? volume?.shutDown()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
