// A store that goes quiet copies its WAL into meta.db and starts it over empty (so new frames append instead of
// rewriting pages the kernel may have evicted); a store that keeps committing is left alone.
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

final class QuietCheckpointTests: VolumeTestCase {
    private var walBytes: Int {
        (try? FileManager.default.attributesOfItem(atPath: dir + "/store/meta.db-wal")[.size] as? Int) ?? -1
    }

    func testTheWALStartsOverEmptyOnceTheStoreIsQuietAndNotWhileItCommits() throws {
        let v = try XCTUnwrap(volume)
        let quietMs = Int(Volume.walTruncateQuietMs)
        // Commits every 50 ms for three quiet periods: never quiet long enough.
        let start = Date()
        var n = 0
        while Date().timeIntervalSince(start) < Double(3 * quietMs) / 1000 {
            _ = try v.mkdir(parent: InodeRecord.rootIno, name: Array("d\(n)".utf8), mode: 0o755, caller: user)
            n += 1
            usleep(50_000)
            XCTAssertGreaterThan(walBytes, 0, "the WAL was truncated while commits kept coming (after \(n))")
        }
        // Then quiet: within a few checks the WAL is empty, and everything is still there.
        let deadline = Date().addingTimeInterval(Double(quietMs) / 1000 + 2)
        while walBytes != 0 && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(walBytes, 0, "a quiet store's WAL starts over empty")
        XCTAssertEqual(try v.readdir(InodeRecord.rootIno, offset: 0, limit: 1000, plus: false).count, n + 2, "., .. and every directory made")
        // The next commit appends to the empty WAL as usual.
        _ = try v.mkdir(parent: InodeRecord.rootIno, name: Array("after".utf8), mode: 0o755, caller: user)
        XCTAssertGreaterThan(walBytes, 0)
        XCTAssertEqual(try v.lookup(parent: InodeRecord.rootIno, name: Array("after".utf8)).kind, .directory)
    }
}
