// A full disk under the store: writes fail with ENOSPC and nothing is lost; reads keep working; deleting files
// still works (the store keeps a space reserve for exactly that) and gives the space back; a store on a full
// disk still mounts. The store lives on a small tmpfs so the disk really fills.
import Foundation
import XCTest

final class FullDiskTests: MountingTestCase {
    func testAFullDiskRefusesWritesButKeepsReadsDeletesAndMounting() throws {
        let disk = makeDir("disk")
        XCTAssertSucceeds(Commands.run(["/bin/mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", disk]))
        defer { Commands.run(["/bin/umount", disk]) }
        let store = disk + "/store"
        XCTAssertSucceeds(Commands.twinfs(["init", store]))

        var m = try mount(store)
        try Sys.writeFile(m.mountpoint + "/keep", Array("precious\n".utf8))
        let fill = Commands.sh("dd if=/dev/urandom of=\(quote(m.mountpoint + "/big")) bs=1M count=64")
        XCTAssertFalse(fill.ok, "writing 64 MiB onto a 24 MiB disk must fail\n\(fill)")
        XCTAssertTrue(fill.stderr.contains("No space left on device"), "\(fill)")
        let create = Commands.sh("echo more > \(quote(m.mountpoint + "/more"))")
        XCTAssertTrue(create.stderr.contains("No space left on device"), "a create on a full disk fails with ENOSPC\n\(create)")

        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/keep"), Array("precious\n".utf8), "reads work on a full disk")
        XCTAssertSucceeds(Commands.run(["/bin/rm", m.mountpoint + "/big"]), "deleting works on a full disk")
        // The space comes back once the deleted file's data is freed (in the background, within moments).
        var wrote = false
        for _ in 0..<100 where !wrote {
            wrote = (try? Sys.writeFile(m.mountpoint + "/after", Array("after\n".utf8))) != nil
            if !wrote { usleep(50_000) }
        }
        XCTAssertTrue(wrote, "writing works again once space was freed")
        XCTAssertEqual(m.unmount()?.status, 0)

        // Fill the disk from outside, then mount: the store must still come up and serve its files.
        Commands.sh("dd if=/dev/zero of=\(quote(disk + "/filler")) bs=1M count=64 || true")
        m = try mount(store)
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/keep"), Array("precious\n".utf8))
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/after"), Array("after\n".utf8))
        XCTAssertEqual(m.unmount()?.status, 0)
    }
}
