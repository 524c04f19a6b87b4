// Set-user-ID and set-group-ID bits behave as on a local filesystem: a write or truncate by an unprivileged user
// clears them (set-group-ID only where group execute is set), chown clears them, root's writes keep them.
// The same script runs on a directory of the local disk and on the mount; the two must print the same modes.
import Foundation
import XCTest

final class SetIDBitsTests: MountingTestCase {
    /// Runs `setup` as root, `asUser` as uid 1000 and `report` as root in each directory ($D); the reports.
    private func runOnBoth(_ dirs: [String], setup: String, asUser: String, report: String) -> [String] {
        dirs.map { dir in
            shell("D=\(quote(dir))\n" + setup)
            shell("D=\(quote(dir))\n" + asUser, as: (1000, 1000))
            return shell("D=\(quote(dir))\n" + report).stdout
        }
    }

    func testWritesTruncatesAndChownClearSetIDBitsLikeALocalFilesystem() throws {
        let m = try freshMount()
        let local = makeDir("local", mode: 0o777)
        let setup = """
            cd "$D"
            for f in write trunc keep nogx chown; do : > $f; chown 1000:1000 $f; done
            chmod 6755 write trunc keep chown
            chmod 2644 nogx
            echo root >> keep
            chown 1001 chown
            """
        let asUser = """
            cd "$D"
            echo user >> write
            truncate -s 1 trunc
            echo user >> nogx
            """
        let report = "cd \"$D\"; for f in write trunc keep nogx chown; do stat -c '%n %a' $f; done"
        let outputs = runOnBoth([local, m.mountpoint], setup: setup, asUser: asUser, report: report)
        XCTAssertEqual(outputs[1], outputs[0], "modes on twinfs (second) differ from the local disk (first)")
        XCTAssertTrue(outputs[1].contains("write 755"), "an unprivileged write clears both set-id bits: \(outputs[1])")
        XCTAssertTrue(outputs[1].contains("keep 6755"), "root's write keeps them: \(outputs[1])")
    }

    /// The mount asks the kernel for FUSE_HANDLE_KILLPRIV_V2 (no GETXATTR before every write), which leaves all
    /// of this to twinfs: O_TRUNC at open clears set-id bits like truncate(1), and a write, a truncate or a chown
    /// drops file capabilities whoever does it. Same script on the local disk and on the mount.
    func testOpenWithTruncationAndFileCapabilitiesBehaveLikeALocalFilesystem() throws {
        let m = try freshMount()
        let local = makeDir("local-caps", mode: 0o777)
        // cap_net_raw+ep as a VFS_CAP_REVISION_2 blob: what setcap(8) would write.
        let capability = "0x0100000200200000000000000000000000000000"
        let setup = """
            cd "$D"
            for f in otrunc otrunc-empty; do echo data > $f; chown 1000:1000 $f; chmod 6755 $f; done
            : > otrunc-empty; chown 1000:1000 otrunc-empty; chmod 6755 otrunc-empty
            for f in cap-write cap-trunc cap-chown cap-keep; do echo data > $f; setfattr -n security.capability -v \(capability) $f; done
            echo more >> cap-write
            truncate -s 2 cap-trunc
            chown 1000 cap-chown
            """
        let asUser = """
            cd "$D"
            : > otrunc
            : > otrunc-empty
            """
        let report = """
            cd "$D"
            for f in otrunc otrunc-empty; do stat -c '%n %a %s' $f; done
            for f in cap-write cap-trunc cap-chown cap-keep; do
              if getfattr --absolute-names -n security.capability $f >/dev/null 2>&1; then echo "$f has caps"; else echo "$f no caps"; fi
            done
            """
        let outputs = runOnBoth([local, m.mountpoint], setup: setup, asUser: asUser, report: report)
        XCTAssertEqual(outputs[1], outputs[0], "twinfs (second) differs from the local disk (first)")
        XCTAssertTrue(outputs[1].contains("otrunc 755 0"), "an unprivileged O_TRUNC clears both set-id bits: \(outputs[1])")
        XCTAssertTrue(outputs[1].contains("otrunc-empty 755 0"), "even of an empty file: \(outputs[1])")
        for f in ["cap-write", "cap-trunc", "cap-chown"] {
            XCTAssertTrue(outputs[1].contains("\(f) no caps"), "\(f) drops file capabilities: \(outputs[1])")
        }
        XCTAssertTrue(outputs[1].contains("cap-keep has caps"), "an untouched file keeps them: \(outputs[1])")
    }
}
