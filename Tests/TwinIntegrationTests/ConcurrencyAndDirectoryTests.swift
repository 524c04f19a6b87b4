// Many processes at once against one mount (the daemon serves requests on several threads), large
// directories read while they change, and the mount options that gate access (no allow_other, ro).
// Never: accept a lost or duplicated directory entry, however rare.
import Foundation
import XCTest

final class ConcurrencyAndDirectoryTests: MountingTestCase {
    /// Four processes create, write, rename and unlink files in one shared directory at the same time;
    /// afterwards the directory holds exactly the survivors, each with its own content.
    func testParallelProcessesCreateRenameAndUnlinkInOneDirectory() throws {
        let m = try freshMount()
        let worker = #"""
        import os, sys
        d, w, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        for i in range(n):
            tmp, final = f"{d}/.w{w}-{i}.tmp", f"{d}/w{w}-{i}"
            with open(tmp, "wb") as f:
                f.write(f"worker {w} file {i}\n".encode() * (1 + i % 50))
            os.rename(tmp, final)
            if i % 3 == 2:
                os.unlink(f"{d}/w{w}-{i - 1}")
        """#
        try Sys.mkdir(m.mountpoint + "/shared")
        let n = 300
        shell("""
        for w in 0 1 2 3; do /usr/bin/python3 -c \(quote(worker)) "$M/shared" $w \(n) & done
        wait
        """, in: m)
        var expected: [String: String] = [:]
        for w in 0..<4 {
            for i in 0..<n where !(i % 3 == 1 && i + 1 < n) {
                expected["w\(w)-\(i)"] = String(repeating: "worker \(w) file \(i)\n", count: 1 + i % 50)
            }
        }
        let names = try Sys.listDir(m.mountpoint + "/shared")
        XCTAssertEqual(names.count, Set(names).count, "no name listed twice")
        XCTAssertEqual(Set(names), Set(expected.keys), "exactly the survivors, no temporaries")
        for (name, content) in expected {
            XCTAssertEqual(String(decoding: try Sys.readAll(m.mountpoint + "/shared/" + name), as: UTF8.self), content, name)
        }
        XCTAssertEqual(try Sys.stat(m.mountpoint + "/shared").st_nlink, 2)
    }

    /// Two processes write disjoint ranges of one file at once; every byte ends up where its writer put it.
    func testParallelWritersToDisjointRangesOfOneFile() throws {
        let m = try freshMount()
        let writer = #"""
        import os, sys
        path, w = sys.argv[1], int(sys.argv[2])
        fd = os.open(path, os.O_WRONLY)
        block = bytes([65 + w]) * 4096
        for i in range(w, 2048, 2):      # interleaved 4 KiB blocks: 8 MiB, 64 KiB tracks shared by both writers
            os.pwrite(fd, block, i * 4096)
        os.fsync(fd); os.close(fd)
        """#
        let path = m.mountpoint + "/both"
        try Sys.writeFile(path, [])
        shell("""
        /usr/bin/python3 -c \(quote(writer)) "$M/both" 0 & /usr/bin/python3 -c \(quote(writer)) "$M/both" 1 &
        wait
        """, in: m)
        let data = try Sys.readAll(path)
        XCTAssertEqual(data.count, 2048 * 4096)
        var wrong: Int?
        for block in 0..<2048 where wrong == nil {
            let owner = UInt8(65 + block % 2)
            if data[(block * 4096)..<((block + 1) * 4096)].contains(where: { $0 != owner }) { wrong = block }
        }
        XCTAssertNil(wrong, "block \(wrong ?? -1) holds the other writer's (or no) data")
    }

    /// readdir of a large directory while entries are removed: every entry that stays is listed exactly once
    /// (POSIX leaves only the changed entries unspecified).
    func testLargeDirectoryListsEveryStableEntryOnceWhileOthersAreRemoved() throws {
        let m = try freshMount()
        let script = #"""
        import os, sys
        d = sys.argv[1]
        os.mkdir(d)
        for i in range(5000):
            open(f"{d}/e{i:05d}", "w").close()
        assert len(os.listdir(d)) == 5000, len(os.listdir(d))
        seen = []
        with os.scandir(d) as it:
            for k, e in enumerate(it):
                seen.append(e.name)
                if k % 7 == 0:
                    for j in range(k % 10, 5000, 1000):   # remove odd-numbered entries as we go
                        p = f"{d}/e{j * 2 + 1:05d}" if j * 2 + 1 < 5000 else None
                        if p and os.path.exists(p): os.unlink(p)
        stable = {f"e{i:05d}" for i in range(0, 5000, 2)}
        dups = {n for n in seen if seen.count(n) > 1} if len(seen) != len(set(seen)) else set()
        missing = stable - set(seen)
        print(f"seen={len(seen)} dups={sorted(dups)[:10]} missing={sorted(missing)[:10]}")
        sys.exit(1 if dups or missing else 0)
        """#
        let r = Commands.python(script, args: [m.mountpoint + "/big"])
        XCTAssertSucceeds(r, "readdir while removing entries")
        let final = try Sys.listDir(m.mountpoint + "/big")
        XCTAssertEqual(final.count, Set(final).count)
        XCTAssertTrue(Set((0..<2500).map { String(format: "e%05d", $0 * 2) }).isSubset(of: Set(final)))
    }

    /// Without -o allow_other, only the mounting user (root here) gets in; other uids are refused by the kernel.
    func testWithoutAllowOtherOtherUsersCannotEnter() throws {
        let m = try freshMount(options: [])
        try Sys.writeFile(m.mountpoint + "/f", [1])
        try Sys.chmod(m.mountpoint, 0o777)
        try Sys.chmod(m.mountpoint + "/f", 0o666)
        let r = Commands.python(#"""
        import os, sys, errno
        try:
            os.listdir(sys.argv[1]); print("ok")
        except OSError as e:
            print(errno.errorcode[e.errno])
        """#, as: (uid: 1000, gid: 1000), args: [m.mountpoint])
        XCTAssertEqual(r.stdoutLines, ["EACCES"], "\(r)")
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/f"), [1], "root still can")
    }

    /// -o ro: everything reads, nothing writes (EROFS), and the store is unchanged afterwards.
    func testReadOnlyMountRefusesEveryChange() throws {
        let store = try initStore()
        var m = try mount(store)
        try Sys.mkdir(m.mountpoint + "/d")
        try Sys.writeFile(m.mountpoint + "/d/f", Array("kept".utf8))
        XCTAssertEqual(m.unmount()?.status, 0)
        m = try mount(store, at: "ro", options: ["allow_other", "ro"])
        let M = m.mountpoint
        XCTAssertEqual(try Sys.readAll(M + "/d/f"), Array("kept".utf8))
        XCTAssertErrno(EROFS, "open for write") { _ = try Sys.open(M + "/d/f", O_WRONLY) }
        XCTAssertErrno(EROFS, "create") { _ = try Sys.open(M + "/d/new", O_CREAT | O_WRONLY) }
        XCTAssertErrno(EROFS, "mkdir") { try Sys.mkdir(M + "/d2") }
        XCTAssertErrno(EROFS, "unlink") { try Sys.unlink(M + "/d/f") }
        XCTAssertErrno(EROFS, "rename") { try Sys.rename(M + "/d/f", M + "/g") }
        XCTAssertErrno(EROFS, "chmod") { try Sys.chmod(M + "/d/f", 0o600) }
        XCTAssertErrno(EROFS, "setxattr") { try Sys.setxattr(M + "/d/f", "user.x", [1]) }
        XCTAssertEqual(m.unmount()?.status, 0)
        m = try mount(store, at: "rw")
        XCTAssertEqual(try Sys.listDir(m.mountpoint), ["d"])
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/d/f"), Array("kept".utf8))
    }

    /// Editors and stream tools replace files by writing a temporary and renaming it over the original.
    func testInPlaceEditsBySedSortAndAnEditorStyleSave() throws {
        let m = try freshMount()
        shell("""
        cd "$M"
        seq 1 1000 | sort -R --random-source=<(yes) > list
        ln list list.hard
        sed -i 's/^5$/five/' list
        grep -qx five list
        ! grep -qx five list.hard
        sort -n -o list list
        [ "$(head -n1 list)" = five ] && [ "$(sed -n 2p list)" = 1 ]
        [ "$(wc -l < list)" = 1000 ]
        # editor-style: write swap, fsync, rename over, keep a backup
        printf 'draft\\n' > doc; cp -p doc doc~
        printf 'final\\n' > .doc.swp; sync .doc.swp; mv -f .doc.swp doc
        [ "$(cat doc)" = final ] && [ "$(cat doc~)" = draft ] && [ ! -e .doc.swp ]
        find . -type f | sort > "$S/found"
        [ "$(wc -l < "$S/found")" = 4 ]
        """, in: m)
    }
}
