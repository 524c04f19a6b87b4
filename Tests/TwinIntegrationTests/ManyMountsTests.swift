// A workstation with many mounts (snaps, containers) has a mount table longer than one 4 KiB page; what twinfs
// reads of it (is this store mounted, and where?) must not stop at the first page.
import Foundation
import TwinStore
import XCTest

final class ManyMountsTests: MountingTestCase {
    func testAStoreMountedPastTheFirstPageOfTheMountTableIsSeenAsMounted() throws {
        var filler: [String] = []
        defer { for dir in filler.reversed() { XCTAssertSucceeds(Commands.run(["/bin/umount", dir])) } }
        // Small tmpfs mounts first: the twinfs mount's line comes after them.
        for i in 0..<48 {
            let dir = makeDir("filler\(i)")
            XCTAssertSucceeds(Commands.run(["/bin/mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir]))
            filler.append(dir)
        }
        XCTAssertGreaterThan(try XCTUnwrap(readMountinfo()).utf8.count, 4096, "the mount table is longer than a page")
        let store = try initStore()
        let m = try mount(store)
        XCTAssertTrue(MountTable.isMounted(m.mountpoint), "the tests' own view of the table")
        let status = Commands.twinfs(["status", store, "--json"])
        XCTAssertSucceeds(status)
        let object = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(object?["mounted"] as? Bool, true, "twinfs status sees its own mount\n\(status)")
        XCTAssertEqual(m.unmount()?.status, 0)
    }
}
