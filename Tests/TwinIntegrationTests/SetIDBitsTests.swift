// Set-user-ID and set-group-ID bits behave as on a local filesystem: a write or truncate by an unprivileged user
// clears them (set-group-ID only where group execute is set), chown clears them, root's writes keep them.
// The same script runs on a directory of the local disk and on the mount; the two must print the same modes.
import Foundation
import XCTest

final class SetIDBitsTests: MountingTestCase {
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
        var outputs: [String] = []
        for dir in [local, m.mountpoint] {
            shell("D=\(quote(dir))\n" + setup)
            shell("D=\(quote(dir))\n" + asUser, as: (1000, 1000))
            outputs.append(shell("D=\(quote(dir))\n" + report).stdout)
        }
        XCTAssertEqual(outputs[1], outputs[0], "modes on twinfs (second) differ from the local disk (first)")
        XCTAssertTrue(outputs[1].contains("write 755"), "an unprivileged write clears both set-id bits: \(outputs[1])")
        XCTAssertTrue(outputs[1].contains("keep 6755"), "root's write keeps them: \(outputs[1])")
    }
}
