// Remounting: a store can be mounted again right after `fusermount3 -u` returns (the old daemon may still be
// closing it), and a store that is mounted is refused by name rather than by a lock timeout.
import Foundation
import XCTest

final class RemountTests: MountingTestCase {
    func testAStoreMountsAgainRightAfterItsUnmountReturns() throws {
        let store = try initStore()
        for round in 0..<3 {
            let m = try mount(store)
            try Sys.writeFile(m.mountpoint + "/round\(round)", Array("round \(round)\n".utf8))
            // No wait between the unmount and the next mount: exactly what a user's script does.
            XCTAssertSucceeds(Commands.run(["/usr/bin/fusermount3", "-u", m.mountpoint]))
            _ = m.waitForExit(timeoutSeconds: 0)
        }
        let m = try mount(store)
        for round in 0..<3 {
            XCTAssertEqual(try Sys.readAll(m.mountpoint + "/round\(round)"), Array("round \(round)\n".utf8))
        }
    }

    func testAMountedStoreIsRefusedWithWhereItIsMounted() throws {
        let store = try initStore()
        let m = try mount(store)
        let other = makeDir("other")
        let started = Date()
        let r = Commands.twinfs(["mount", store, other])
        XCTAssertCLIError(r, mentioning: ["already mounted at \(m.mountpoint)"])
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "refused at once, not after waiting for the lock")
        XCTAssertFalse(MountTable.isMounted(other))
    }
}
