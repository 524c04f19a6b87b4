// POSIX behaviour of a mounted twinfs as a local filesystem has it: ownership from the caller, setgid
// directories, permissions enforced for other uids (setpriv, -o allow_other), nlink counts, timestamps,
// 255-byte names, O_APPEND/O_TRUNC/O_EXCL, unlinked-but-open files, shared writable mmap, renameat2 flags,
// fallocate and punch hole, SEEK_DATA/SEEK_HOLE, sparse files beyond 4 GiB, xattrs.
// Never: accept a behaviour because twinfs has it; the expectations are those of ext4 on Linux.
import CLinuxShims
import Foundation
import XCTest

final class PosixSemanticsTests: MountingTestCase {
    private let user1000 = (uid: uid_t(1000), gid: gid_t(1000))
    private let user1001 = (uid: uid_t(1001), gid: gid_t(2002))

    private func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: ownership and permissions

    func testNewEntriesAreOwnedByTheCallersUidAndGid() throws {
        let m = try freshMount()
        let pub = m.mountpoint + "/pub"
        try Sys.mkdir(pub)
        try Sys.chmod(pub, 0o777)
        for user in [user1000, user1001] {
            let tag = "u\(user.uid)"
            shell("""
            cd "$M/pub"
            echo data > \(tag).file
            mkdir \(tag).dir
            ln -s \(tag).file \(tag).link
            mkfifo \(tag).fifo
            """, in: m, as: user)
            for name in ["file", "dir", "link", "fifo"] {
                let st = try Sys.lstat("\(pub)/\(tag).\(name)")
                XCTAssertEqual(st.st_uid, user.uid, "owner of \(tag).\(name)")
                XCTAssertEqual(st.st_gid, user.gid, "group of \(tag).\(name)")
            }
        }
        try Sys.writeFile(pub + "/root.file", [1])
        let st = try Sys.stat(pub + "/root.file")
        XCTAssertEqual([st.st_uid, st.st_gid], [0, 0])
    }

    func testSetgidDirectoryGivesItsGroupToNewEntries() throws {
        let m = try freshMount()
        let sg = m.mountpoint + "/sg"
        try Sys.mkdir(sg)
        try Sys.chown(sg, 0, 3000)
        try Sys.chmod(sg, 0o2777)
        let plain = m.mountpoint + "/plain"
        try Sys.mkdir(plain)
        try Sys.chmod(plain, 0o777)
        shell("""
        echo x > "$M/sg/file"; mkdir "$M/sg/sub"; mkdir "$M/sg/sub/deeper"
        echo x > "$M/plain/file"; mkdir "$M/plain/sub"
        """, in: m, as: user1000)
        let file = try Sys.stat(sg + "/file"), sub = try Sys.stat(sg + "/sub"), deeper = try Sys.stat(sg + "/sub/deeper")
        XCTAssertEqual(file.st_uid, 1000)
        XCTAssertEqual(file.st_gid, 3000, "a file in a setgid directory takes the directory's group")
        XCTAssertEqual(sub.st_gid, 3000, "a subdirectory takes the group ...")
        XCTAssertEqual(sub.st_mode & S_ISGID, S_ISGID, "... and inherits the setgid bit")
        XCTAssertEqual(deeper.st_gid, 3000, "and so on down")
        XCTAssertEqual(file.st_mode & S_ISGID, 0, "a plain file does not get the setgid bit")
        XCTAssertEqual(try Sys.stat(plain + "/file").st_gid, 1000)
        XCTAssertEqual(try Sys.stat(plain + "/sub").st_mode & S_ISGID, 0)
    }

    func testPermissionsAreEnforcedForOtherUsers() throws {
        let m = try freshMount()
        let M = m.mountpoint
        try Sys.writeFile(M + "/secret", Array("top secret\n".utf8), mode: 0o600)
        try Sys.chmod(M + "/secret", 0o600)
        try Sys.writeFile(M + "/readonly", Array("read me\n".utf8))
        try Sys.chmod(M + "/readonly", 0o644)
        try Sys.mkdir(M + "/rootdir"); try Sys.chmod(M + "/rootdir", 0o755)
        try Sys.writeFile(M + "/rootdir/file", [1])
        try Sys.mkdir(M + "/closed"); try Sys.chmod(M + "/closed", 0o700)
        try Sys.writeFile(M + "/closed/file", [2])
        try Sys.mkdir(M + "/sticky"); try Sys.chmod(M + "/sticky", 0o1777)
        try Sys.writeFile(M + "/sticky/theirs", [3]); try Sys.chown(M + "/sticky/theirs", 1001, 1001)
        try Sys.mkdir(M + "/mine"); try Sys.chown(M + "/mine", 1000, 1000)
        try Sys.writeFile(M + "/mine/own", [4]); try Sys.chown(M + "/mine/own", 1000, 1000)

        let probe = #"""
        import os, errno, sys
        M = sys.argv[1]
        def t(name, f):
            try:
                f(); r = "ok"
            except OSError as e:
                r = errno.errorcode[e.errno]
            print(f"{name}={r}")
        def wr(p):
            with open(p, "w") as fh: fh.write("x")
        t("read secret", lambda: open(f"{M}/secret").read())
        t("read readonly", lambda: open(f"{M}/readonly").read())
        t("write readonly", lambda: open(f"{M}/readonly", "r+").write("y"))
        t("truncate readonly", lambda: os.truncate(f"{M}/readonly", 0))
        t("create in rootdir", lambda: wr(f"{M}/rootdir/new"))
        t("mkdir in rootdir", lambda: os.mkdir(f"{M}/rootdir/newdir"))
        t("unlink in rootdir", lambda: os.unlink(f"{M}/rootdir/file"))
        t("rename out of rootdir", lambda: os.rename(f"{M}/rootdir/file", f"{M}/mine/stolen"))
        t("stat in closed", lambda: os.stat(f"{M}/closed/file"))
        t("list closed", lambda: os.listdir(f"{M}/closed"))
        t("unlink other's file in sticky", lambda: os.unlink(f"{M}/sticky/theirs"))
        t("create in sticky", lambda: wr(f"{M}/sticky/mine"))
        t("unlink own file in sticky", lambda: os.unlink(f"{M}/sticky/mine"))
        t("chmod root's file", lambda: os.chmod(f"{M}/readonly", 0o777))
        t("chown own file to root", lambda: os.chown(f"{M}/mine/own", 0, 0))
        t("chgrp own file to foreign group", lambda: os.chown(f"{M}/mine/own", -1, 0))
        t("set times of root's file", lambda: os.utime(f"{M}/readonly", (1, 1)))
        t("touch root's file to now", lambda: os.utime(f"{M}/readonly", None))
        t("setxattr on root's file", lambda: os.setxattr(f"{M}/readonly", "user.x", b"1"))
        t("chmod own file", lambda: os.chmod(f"{M}/mine/own", 0o600))
        t("create in own dir", lambda: wr(f"{M}/mine/new"))
        t("setxattr on own file", lambda: os.setxattr(f"{M}/mine/own", "user.x", b"1"))
        """#
        let r = Commands.python(probe, as: user1000, args: [M])
        XCTAssertSucceeds(r)
        let got = Dictionary(uniqueKeysWithValues: r.stdoutLines.map { line -> (String, String) in
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            return (parts[0], parts.count > 1 ? parts[1] : "")
        })
        let expected: [String: String] = [
            "read secret": "EACCES", "read readonly": "ok", "write readonly": "EACCES", "truncate readonly": "EACCES",
            "create in rootdir": "EACCES", "mkdir in rootdir": "EACCES", "unlink in rootdir": "EACCES",
            "rename out of rootdir": "EACCES", "stat in closed": "EACCES", "list closed": "EACCES",
            "unlink other's file in sticky": "EPERM", "create in sticky": "ok", "unlink own file in sticky": "ok",
            "chmod root's file": "EPERM", "chown own file to root": "EPERM", "chgrp own file to foreign group": "EPERM",
            "set times of root's file": "EPERM", "touch root's file to now": "EACCES", "setxattr on root's file": "EACCES",
            "chmod own file": "ok", "create in own dir": "ok", "setxattr on own file": "ok",
        ]
        for (op, want) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(got[op], want, "uid 1000: \(op)")
        }
        // And nothing the refused calls aimed at changed.
        XCTAssertEqual(try Sys.readAll(M + "/secret"), Array("top secret\n".utf8))
        XCTAssertEqual(try Sys.readAll(M + "/readonly"), Array("read me\n".utf8))
        XCTAssertEqual(try Sys.stat(M + "/readonly").st_mode & 0o7777, 0o644)
        XCTAssertEqual(try Sys.listDir(M + "/rootdir"), ["file"])
        XCTAssertEqual(try Sys.listDir(M + "/sticky"), ["theirs"])
        XCTAssertEqual(try Sys.stat(M + "/mine/own").st_uid, 1000)
    }

    // MARK: link counts and timestamps

    func testLinkCountsOfFilesAndDirectories() throws {
        let m = try freshMount()
        let M = m.mountpoint
        try Sys.writeFile(M + "/f", [1])
        XCTAssertEqual(try Sys.stat(M + "/f").st_nlink, 1)
        try Sys.link(M + "/f", M + "/g")
        try Sys.mkdir(M + "/d")
        try Sys.link(M + "/f", M + "/d/h")
        XCTAssertEqual(try Sys.stat(M + "/f").st_nlink, 3)
        XCTAssertEqual(try Sys.stat(M + "/d/h").st_ino, try Sys.stat(M + "/f").st_ino)
        try Sys.unlink(M + "/g")
        XCTAssertEqual(try Sys.stat(M + "/f").st_nlink, 2)
        try Sys.rename(M + "/d/h", M + "/h")
        XCTAssertEqual(try Sys.stat(M + "/h").st_nlink, 2)

        XCTAssertEqual(try Sys.stat(M + "/d").st_nlink, 2, "an empty directory: . and its entry in the parent")
        try Sys.mkdir(M + "/d/s1"); try Sys.mkdir(M + "/d/s2"); try Sys.mkdir(M + "/d/s3")
        XCTAssertEqual(try Sys.stat(M + "/d").st_nlink, 5, "plus one per subdirectory's ..")
        try Sys.rmdir(M + "/d/s1")
        XCTAssertEqual(try Sys.stat(M + "/d").st_nlink, 4)
        try Sys.rename(M + "/d/s2", M + "/s2")
        XCTAssertEqual(try Sys.stat(M + "/d").st_nlink, 3, "moving a subdirectory out drops the count")
        let rootLinks = try Sys.stat(M).st_nlink
        XCTAssertEqual(rootLinks, 4, "root: 2 + d + s2")
        try Sys.writeFile(M + "/d/file", [1])
        XCTAssertEqual(try Sys.stat(M + "/d").st_nlink, 3, "files do not count")
    }

    func testTimestampsFollowPOSIX() throws {
        let m = try freshMount()
        let M = m.mountpoint
        try Sys.mkdir(M + "/dir")
        let past = timespec(tv_sec: 946_684_800, tv_nsec: 0)  // 2000-01-01
        try Sys.utimens(M + "/dir", atime: past, mtime: past)
        usleep(30_000)  // makes "updated to now" distinguishable from "left alone"

        let t0 = now() - 0.01
        try Sys.writeFile(M + "/dir/f", Array("abc".utf8))
        let created = try Sys.stat(M + "/dir/f")
        for (name, ts) in [("atime", created.st_atim), ("mtime", created.st_mtim), ("ctime", created.st_ctim)] {
            XCTAssertGreaterThanOrEqual(ts.seconds, t0, "new file \(name)")
            XCTAssertLessThanOrEqual(ts.seconds, now() + 1, "new file \(name)")
        }
        let dirAfterCreate = try Sys.stat(M + "/dir")
        XCTAssertGreaterThanOrEqual(dirAfterCreate.st_mtim.seconds, t0, "creating an entry updates the directory's mtime")
        XCTAssertGreaterThanOrEqual(dirAfterCreate.st_ctim.seconds, t0, "... and ctime")

        // Explicit times, to the nanosecond.
        let a = timespec(tv_sec: 1_000_000_000, tv_nsec: 123), mt = timespec(tv_sec: 1_500_000_000, tv_nsec: 456_789)
        try Sys.utimens(M + "/dir/f", atime: a, mtime: mt)
        var st = try Sys.stat(M + "/dir/f")
        XCTAssertEqual([st.st_atim.tv_sec, st.st_atim.tv_nsec], [1_000_000_000, 123])
        XCTAssertEqual([st.st_mtim.tv_sec, st.st_mtim.tv_nsec], [1_500_000_000, 456_789])

        // UTIME_OMIT leaves one alone, UTIME_NOW sets the other to now.
        usleep(30_000)
        let t1 = now() - 0.01
        try Sys.utimens(M + "/dir/f", atime: timespec(tv_sec: 0, tv_nsec: twin_UTIME_OMIT),
                        mtime: timespec(tv_sec: 0, tv_nsec: twin_UTIME_NOW))
        st = try Sys.stat(M + "/dir/f")
        XCTAssertEqual([st.st_atim.tv_sec, st.st_atim.tv_nsec], [1_000_000_000, 123], "UTIME_OMIT")
        XCTAssertGreaterThanOrEqual(st.st_mtim.seconds, t1, "UTIME_NOW")
        XCTAssertGreaterThanOrEqual(st.st_ctim.seconds, t1, "setting times changes ctime")

        // A write updates mtime and ctime.
        try Sys.utimens(M + "/dir/f", atime: past, mtime: past)
        usleep(30_000)
        let t2 = now() - 0.01
        let fd = try Sys.open(M + "/dir/f", O_WRONLY)
        try Sys.pwrite(fd, [9], at: 1)
        try Sys.close(fd)
        st = try Sys.stat(M + "/dir/f")
        XCTAssertGreaterThanOrEqual(st.st_mtim.seconds, t2, "write updates mtime")
        XCTAssertGreaterThanOrEqual(st.st_ctim.seconds, t2, "write updates ctime")

        // chmod changes ctime but not mtime.
        try Sys.utimens(M + "/dir/f", atime: past, mtime: past)
        usleep(30_000)
        let t3 = now() - 0.01
        try Sys.chmod(M + "/dir/f", 0o600)
        st = try Sys.stat(M + "/dir/f")
        XCTAssertEqual(st.st_mtim.tv_sec, past.tv_sec, "chmod leaves mtime")
        XCTAssertGreaterThanOrEqual(st.st_ctim.seconds, t3, "chmod updates ctime")

        // truncate updates mtime.
        try Sys.truncate(M + "/dir/f", 1)
        XCTAssertGreaterThanOrEqual(try Sys.stat(M + "/dir/f").st_mtim.seconds, t3, "truncate updates mtime")

        // unlink and rename update the directories involved.
        try Sys.mkdir(M + "/other")
        try Sys.utimens(M + "/dir", atime: past, mtime: past)
        try Sys.utimens(M + "/other", atime: past, mtime: past)
        usleep(30_000)
        let t4 = now() - 0.01
        try Sys.rename(M + "/dir/f", M + "/other/f")
        XCTAssertGreaterThanOrEqual(try Sys.stat(M + "/dir").st_mtim.seconds, t4, "rename updates the source directory")
        XCTAssertGreaterThanOrEqual(try Sys.stat(M + "/other").st_mtim.seconds, t4, "rename updates the target directory")
        try Sys.utimens(M + "/other", atime: past, mtime: past)
        usleep(30_000)
        let t5 = now() - 0.01
        try Sys.unlink(M + "/other/f")
        XCTAssertGreaterThanOrEqual(try Sys.stat(M + "/other").st_mtim.seconds, t5, "unlink updates the directory")
    }

    // MARK: names and open flags

    func testNamesUpTo255BytesWorkAnd256AreRefused() throws {
        let m = try freshMount()
        let M = m.mountpoint
        let n255 = String(repeating: "n", count: 255), n256 = String(repeating: "n", count: 256)
        let utf255 = String(repeating: "é", count: 127) + "a", utf256 = String(repeating: "é", count: 128)
        XCTAssertEqual(utf255.utf8.count, 255)
        XCTAssertEqual(utf256.utf8.count, 256)

        try Sys.writeFile(M + "/" + n255, [1])
        try Sys.mkdir(M + "/" + String(repeating: "d", count: 255))
        try Sys.symlink(n255, M + "/" + String(repeating: "s", count: 255))
        try Sys.writeFile(M + "/" + utf255, [2])
        try Sys.rename(M + "/" + n255, M + "/" + String(repeating: "r", count: 255))
        try Sys.link(M + "/" + utf255, M + "/" + String(repeating: "l", count: 255))
        XCTAssertEqual(try Sys.listDir(M).count, 5)
        XCTAssertTrue(try Sys.listDir(M).contains(utf255))
        XCTAssertEqual(try Sys.readAll(M + "/" + utf255), [2])

        XCTAssertErrno(ENAMETOOLONG, "create") { _ = try Sys.open(M + "/" + n256, O_CREAT | O_WRONLY) }
        XCTAssertErrno(ENAMETOOLONG, "create, 256 bytes of UTF-8") { _ = try Sys.open(M + "/" + utf256, O_CREAT | O_WRONLY) }
        XCTAssertErrno(ENAMETOOLONG, "mkdir") { try Sys.mkdir(M + "/" + n256) }
        XCTAssertErrno(ENAMETOOLONG, "symlink") { try Sys.symlink("x", M + "/" + n256) }
        XCTAssertErrno(ENAMETOOLONG, "rename") { try Sys.rename(M + "/" + utf255, M + "/" + n256) }
        XCTAssertErrno(ENAMETOOLONG, "link") { try Sys.link(M + "/" + utf255, M + "/" + n256) }
        XCTAssertErrno(ENAMETOOLONG, "lookup") { _ = try Sys.stat(M + "/" + n256) }
        XCTAssertEqual(try Sys.listDir(M).count, 5, "nothing was created by the refused calls")
    }

    func testAppendTruncAndExclusiveCreate() throws {
        let m = try freshMount()
        let M = m.mountpoint
        try Sys.writeFile(M + "/log", Array("0".utf8))
        let a = try Sys.open(M + "/log", O_WRONLY | O_APPEND), b = try Sys.open(M + "/log", O_WRONLY | O_APPEND)
        try Sys.write(a, Array("1".utf8))
        try Sys.write(b, Array("22".utf8))
        _ = try Sys.lseek(a, 0, SEEK_SET)
        try Sys.write(a, Array("333".utf8))
        try Sys.close(a); try Sys.close(b)
        XCTAssertEqual(String(decoding: try Sys.readAll(M + "/log"), as: UTF8.self), "0122333", "O_APPEND writes go to the end")

        try Sys.writeFile(M + "/t", [UInt8](repeating: 7, count: 100_000))
        try Sys.utimens(M + "/t", atime: timespec(tv_sec: 1000, tv_nsec: 0), mtime: timespec(tv_sec: 1000, tv_nsec: 0))
        let t = try Sys.open(M + "/t", O_WRONLY | O_TRUNC)
        XCTAssertEqual(try Sys.fstat(t).st_size, 0, "O_TRUNC empties the file")
        try Sys.close(t)
        XCTAssertEqual(try Sys.stat(M + "/t").st_size, 0)
        XCTAssertGreaterThan(try Sys.stat(M + "/t").st_mtim.tv_sec, 1000, "O_TRUNC updates mtime")

        XCTAssertErrno(EEXIST, "O_EXCL on an existing file") { _ = try Sys.open(M + "/t", O_CREAT | O_EXCL | O_WRONLY) }
        try Sys.symlink("nowhere", M + "/dangling")
        XCTAssertErrno(EEXIST, "O_EXCL does not follow a dangling symlink") {
            _ = try Sys.open(M + "/dangling", O_CREAT | O_EXCL | O_WRONLY)
        }
        XCTAssertFalse(try Sys.listDir(M).contains("nowhere"))
        let oldMask = umask(0o027)
        defer { umask(oldMask) }
        let fresh = try Sys.open(M + "/fresh", O_CREAT | O_EXCL | O_RDWR, 0o666)
        try Sys.close(fresh)
        XCTAssertEqual(try Sys.stat(M + "/fresh").st_mode & 0o777, 0o640, "create mode 0666 under umask 027")
        XCTAssertErrno(ENOTDIR, "O_DIRECTORY on a file") { _ = try Sys.open(M + "/fresh", O_RDONLY | O_DIRECTORY) }
        XCTAssertErrno(ELOOP, "O_NOFOLLOW on a symlink") { _ = try Sys.open(M + "/dangling", O_RDONLY | O_NOFOLLOW) }
        XCTAssertErrno(ENOENT, "open without O_CREAT") { _ = try Sys.open(M + "/absent", O_RDONLY) }
    }

    // MARK: open files

    func testAnUnlinkedFileStaysReadableAndWritableWhileOpen() throws {
        let m = try freshMount()
        let M = m.mountpoint
        var rng = SplitMix64(seed: 11)
        let first = rng.bytes(100_000), second = rng.bytes(70_000)
        let fd = try Sys.open(M + "/ghost", O_RDWR | O_CREAT, 0o644)
        try Sys.pwrite(fd, first, at: 0)
        try Sys.unlink(M + "/ghost")
        XCTAssertFalse(try Sys.listDir(M).contains("ghost"))
        XCTAssertErrno(ENOENT) { _ = try Sys.stat(M + "/ghost") }
        XCTAssertEqual(try Sys.fstat(fd).st_nlink, 0)
        try Sys.pwrite(fd, second, at: 200_000)
        try Sys.fsync(fd)
        let all = try Sys.pread(fd, count: 300_000, at: 0)
        XCTAssertEqual(all.count, 270_000)
        XCTAssertEqual(Array(all[0..<100_000]), first)
        XCTAssertEqual(Array(all[100_000..<200_000]), [UInt8](repeating: 0, count: 100_000))
        XCTAssertEqual(Array(all[200_000...]), second)
        try Sys.ftruncate(fd, 50_000)
        XCTAssertEqual(try Sys.pread(fd, count: 100_000, at: 0), Array(first[0..<50_000]))
        // A new file with the same name is a different file.
        try Sys.writeFile(M + "/ghost", [1, 2, 3])
        XCTAssertEqual(try Sys.pread(fd, count: 10, at: 0), Array(first[0..<10]))
        try Sys.close(fd)
        XCTAssertEqual(try Sys.readAll(M + "/ghost"), [1, 2, 3])

        // Renaming over an open file keeps the old content reachable through the descriptor.
        try Sys.writeFile(M + "/old", Array("old".utf8))
        try Sys.writeFile(M + "/new", Array("new".utf8))
        let oldFD = try Sys.open(M + "/old", O_RDONLY)
        try Sys.rename(M + "/new", M + "/old")
        XCTAssertEqual(try Sys.pread(oldFD, count: 10, at: 0), Array("old".utf8))
        try Sys.close(oldFD)
        XCTAssertEqual(try Sys.readAll(M + "/old"), Array("new".utf8))
    }

    func testSharedWritableMmapIsCoherentAndDurable() throws {
        let store = try initStore()
        var m = try mount(store)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let size = page * 3 + 100
        var rng = SplitMix64(seed: 5)
        var model = rng.bytes(size)
        try Sys.writeFile(m.mountpoint + "/mapped", model)

        let fd = try Sys.open(m.mountpoint + "/mapped", O_RDWR)
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw Errno(code: errno, call: "mmap")
        }
        let bytes = p.assumingMemoryBound(to: UInt8.self)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: bytes, count: size)), model, "mapping shows the file")

        for (offset, value) in [(0, UInt8(0xA1)), (page - 1, 0xA2), (page, 0xA3), (2 * page + 17, 0xA4), (size - 1, 0xA5)] {
            bytes[offset] = value
            model[offset] = value
        }
        XCTAssertEqual(try Sys.pread(fd, count: size, at: 0), model, "read(2) sees stores to the mapping at once")
        try Sys.pwrite(fd, [0xB1, 0xB2], at: Int64(page + 5))
        model[page + 5] = 0xB1; model[page + 6] = 0xB2
        XCTAssertEqual(bytes[page + 5], 0xB1, "the mapping sees write(2) at once")

        let fd2 = try Sys.open(m.mountpoint + "/mapped", O_RDONLY)
        let p2 = mmap(nil, size, PROT_READ, MAP_SHARED, fd2, 0)!
        XCTAssertEqual(p2.assumingMemoryBound(to: UInt8.self)[2 * page + 17], 0xA4, "a second mapping shares the pages")
        munmap(p2, size); close(fd2)

        XCTAssertEqual(msync(p, size, MS_SYNC), 0, "msync: \(String(cString: strerror(errno)))")
        bytes[3 * page + 50] = 0xC1  // after msync, written back only by close/unmount
        model[3 * page + 50] = 0xC1
        munmap(p, size)
        try Sys.close(fd)
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/mapped"), model)

        XCTAssertEqual(m.unmount()?.status, 0)
        m = try mount(store, at: "again")
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/mapped"), model, "mapped stores survive unmount and remount")
    }

    // MARK: rename

    func testRenameNoreplaceAndExchange() throws {
        let m = try freshMount()
        let M = m.mountpoint
        try Sys.writeFile(M + "/a", Array("A".utf8))
        try Sys.writeFile(M + "/b", Array("B".utf8))
        XCTAssertErrno(EEXIST, "RENAME_NOREPLACE onto an existing name") {
            try Sys.renameat2(M + "/a", M + "/b", flags: twin_RENAME_NOREPLACE)
        }
        XCTAssertEqual(try Sys.readAll(M + "/a"), Array("A".utf8))
        XCTAssertEqual(try Sys.readAll(M + "/b"), Array("B".utf8))
        try Sys.renameat2(M + "/a", M + "/c", flags: twin_RENAME_NOREPLACE)
        XCTAssertEqual(try Sys.listDir(M), ["b", "c"])

        let inoB = try Sys.stat(M + "/b").st_ino, inoC = try Sys.stat(M + "/c").st_ino
        try Sys.renameat2(M + "/c", M + "/b", flags: twin_RENAME_EXCHANGE)
        XCTAssertEqual(try Sys.readAll(M + "/b"), Array("A".utf8))
        XCTAssertEqual(try Sys.readAll(M + "/c"), Array("B".utf8))
        XCTAssertEqual(try Sys.stat(M + "/b").st_ino, inoC)
        XCTAssertEqual(try Sys.stat(M + "/c").st_ino, inoB)

        // Exchange a directory with a file in another directory.
        try Sys.mkdir(M + "/d1"); try Sys.mkdir(M + "/d2")
        try Sys.mkdir(M + "/d1/x"); try Sys.writeFile(M + "/d1/x/child", [1])
        try Sys.writeFile(M + "/d2/y", [2])
        try Sys.renameat2(M + "/d1/x", M + "/d2/y", flags: twin_RENAME_EXCHANGE)
        XCTAssertEqual(try Sys.readAll(M + "/d1/x"), [2])
        XCTAssertEqual(try Sys.readAll(M + "/d2/y/child"), [1])
        XCTAssertEqual(try Sys.stat(M + "/d1").st_nlink, 2, "d1 lost its subdirectory")
        XCTAssertEqual(try Sys.stat(M + "/d2").st_nlink, 3, "d2 gained one")
        XCTAssertErrno(ENOENT, "RENAME_EXCHANGE needs both names") {
            try Sys.renameat2(M + "/b", M + "/missing", flags: twin_RENAME_EXCHANGE)
        }

        // Plain rename's rules.
        try Sys.mkdir(M + "/full"); try Sys.writeFile(M + "/full/f", [1])
        try Sys.mkdir(M + "/empty")
        try Sys.mkdir(M + "/src")
        XCTAssertErrno(ENOTEMPTY, "directory over a non-empty directory") { try Sys.rename(M + "/src", M + "/full") }
        XCTAssertErrno(EISDIR, "file over a directory") { try Sys.rename(M + "/b", M + "/empty") }
        XCTAssertErrno(ENOTDIR, "directory over a file") { try Sys.rename(M + "/src", M + "/b") }
        XCTAssertErrno(EINVAL, "directory into itself") { try Sys.rename(M + "/src", M + "/src/inner") }
        try Sys.rename(M + "/src", M + "/empty")
        XCTAssertEqual(try Sys.listDir(M), ["b", "c", "d1", "d2", "empty", "full"])
        try Sys.rename(M + "/b", M + "/c")
        XCTAssertEqual(try Sys.readAll(M + "/c"), Array("A".utf8))
        try Sys.rename(M + "/c", M + "/c")
        XCTAssertEqual(try Sys.readAll(M + "/c"), Array("A".utf8), "rename onto itself changes nothing")
    }

    // MARK: allocation, holes, large files

    func testFallocateAndPunchHole() throws {
        let m = try freshMount()
        let fd = try Sys.open(m.mountpoint + "/f", O_RDWR | O_CREAT)
        defer { close(fd) }
        try Sys.fallocate(fd, mode: 0, offset: 0, length: 100_000)
        XCTAssertEqual(try Sys.fstat(fd).st_size, 100_000, "mode 0 extends the size")
        XCTAssertEqual(try Sys.pread(fd, count: 200_000, at: 0), [UInt8](repeating: 0, count: 100_000))
        try Sys.fallocate(fd, mode: 0, offset: 50_000, length: 100_000)
        XCTAssertEqual(try Sys.fstat(fd).st_size, 150_000)
        try Sys.fallocate(fd, mode: twin_FALLOC_FL_KEEP_SIZE, offset: 150_000, length: 100_000)
        XCTAssertEqual(try Sys.fstat(fd).st_size, 150_000, "KEEP_SIZE keeps it")

        let track = 65_536
        var rng = SplitMix64(seed: 3)
        var model = rng.bytes(4 * track)
        try Sys.pwrite(fd, model, at: 0)
        try Sys.fallocate(fd, mode: 0, offset: 1000, length: 100_000)
        XCTAssertEqual(try Sys.pread(fd, count: model.count, at: 0), model, "mode 0 on written data changes nothing")

        try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: 10_000, length: 30_000)
        for i in 10_000..<40_000 { model[i] = 0 }
        try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: Int64(2 * track), length: Int64(track))
        for i in (2 * track)..<(3 * track) { model[i] = 0 }
        try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: Int64(4 * track - 10), length: 1_000_000)
        for i in (4 * track - 10)..<(4 * track) { model[i] = 0 }
        XCTAssertEqual(try Sys.fstat(fd).st_size, Int(4 * track), "punching keeps the size")
        XCTAssertEqual(try Sys.pread(fd, count: model.count + 10, at: 0), model, "punched ranges read as zeros, the rest intact")
    }

    func testSeekDataAndSeekHoleFindTheWrittenRanges() throws {
        let m = try freshMount()
        let fd = try Sys.open(m.mountpoint + "/sparse", O_RDWR | O_CREAT)
        defer { close(fd) }
        let mib: Int64 = 1 << 20
        try Sys.pwrite(fd, [UInt8](repeating: 1, count: 4096), at: 0)
        try Sys.pwrite(fd, [UInt8](repeating: 2, count: 4096), at: mib)
        try Sys.ftruncate(fd, 3 * mib)
        XCTAssertEqual(try Sys.lseek(fd, 0, twin_SEEK_DATA), 0)
        let hole = try Sys.lseek(fd, 0, twin_SEEK_HOLE)
        XCTAssertGreaterThanOrEqual(hole, 4096, "first hole is after the first written block")
        XCTAssertLessThan(hole, mib, "there is a hole between the two written blocks")
        let data = try Sys.lseek(fd, hole, twin_SEEK_DATA)
        XCTAssertGreaterThan(data, hole)
        XCTAssertLessThanOrEqual(data, mib, "next data is at or before the second written block")
        XCTAssertEqual(try Sys.pread(fd, count: Int(data - hole), at: hole), [UInt8](repeating: 0, count: Int(data - hole)))
        let hole2 = try Sys.lseek(fd, mib, twin_SEEK_HOLE)
        XCTAssertGreaterThanOrEqual(hole2, mib + 4096)
        XCTAssertLessThan(hole2, 3 * mib, "the tail after the second block is a hole")
        XCTAssertErrno(ENXIO, "no data after the last written block") { _ = try Sys.lseek(fd, hole2, twin_SEEK_DATA) }
        XCTAssertEqual(try Sys.lseek(fd, 2 * mib, twin_SEEK_HOLE), 2 * mib, "inside a hole, the hole is here")
        XCTAssertErrno(ENXIO, "SEEK_DATA at EOF") { _ = try Sys.lseek(fd, 3 * mib, twin_SEEK_DATA) }
        XCTAssertErrno(ENXIO, "SEEK_HOLE beyond EOF") { _ = try Sys.lseek(fd, 3 * mib + 1, twin_SEEK_HOLE) }

        // A punched track becomes a hole again.
        let track: Int64 = 65_536
        try Sys.pwrite(fd, [UInt8](repeating: 3, count: Int(3 * track)), at: 0)
        try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: track, length: track)
        let punched = try Sys.lseek(fd, 0, twin_SEEK_HOLE)
        XCTAssertEqual(punched, track, "the punched track is reported as a hole")
        XCTAssertEqual(try Sys.lseek(fd, punched, twin_SEEK_DATA), 2 * track)
    }

    func testSparseFilesBeyond4GiBCostNothingForTheirHoles() throws {
        let store = try initStore()
        var m = try mount(store)
        let gib: Int64 = 1 << 30
        let path = m.mountpoint + "/big"
        var rng = SplitMix64(seed: 99)
        let head = rng.bytes(1000), straddle = rng.bytes(70_000), tail = rng.bytes(12_345)
        let fd = try Sys.open(path, O_RDWR | O_CREAT)
        try Sys.pwrite(fd, head, at: 0)
        try Sys.pwrite(fd, straddle, at: 4 * gib - 35_000)  // across the 2^32 boundary
        try Sys.pwrite(fd, tail, at: 5 * gib)
        try Sys.fsync(fd)
        try Sys.close(fd)
        XCTAssertEqual(try Sys.stat(path).st_size, off_t(5 * gib + 12_345))

        func check(_ p: String, _ label: String) throws {
            let f = try Sys.open(p, O_RDONLY)
            defer { close(f) }
            XCTAssertEqual(try Sys.pread(f, count: 1000, at: 0), head, label)
            XCTAssertEqual(try Sys.pread(f, count: 70_000, at: 4 * gib - 35_000), straddle, label)
            XCTAssertEqual(try Sys.pread(f, count: 20_000, at: 5 * gib), tail, label)
            XCTAssertEqual(try Sys.pread(f, count: 100_000, at: 2 * gib), [UInt8](repeating: 0, count: 100_000), "\(label): hole")
            XCTAssertEqual(try Sys.pread(f, count: 10, at: 6 * gib), [], "\(label): beyond EOF")
        }
        try check(path, "before remount")
        XCTAssertLessThan(try Sys.stat(path).st_blocks, 64 * 1024 * 2, "st_blocks counts only written data (< 64 MiB)")
        try Sys.truncate(path, 6 * gib)
        try Sys.truncate(path, 5 * gib + 12_345)

        XCTAssertEqual(m.unmount()?.status, 0)
        let du = Commands.run(["/usr/bin/du", "-s", "-B1", store])
        XCTAssertSucceeds(du)
        let storeBytes = Int(du.stdout.split(separator: "\t").first ?? "") ?? Int.max
        XCTAssertLessThan(storeBytes, 64 << 20, "the store holds a 5 GiB sparse file in under 64 MiB (du: \(du.stdout))")
        m = try mount(store, at: "again")
        try check(m.mountpoint + "/big", "after remount")
    }

    // MARK: extended attributes

    func testExtendedAttributes() throws {
        let store = try initStore()
        var m = try mount(store)
        let f = m.mountpoint + "/f", d = m.mountpoint + "/d"
        try Sys.writeFile(f, [1])
        try Sys.mkdir(d)
        XCTAssertEqual(try Sys.listxattr(f), [])
        XCTAssertErrno(ENODATA) { _ = try Sys.getxattr(f, "user.missing") }
        try Sys.setxattr(f, "user.a", Array("alpha".utf8))
        try Sys.setxattr(f, "user.empty", [])
        var rng = SplitMix64(seed: 1)
        let big = rng.bytes(3_000)
        try Sys.setxattr(f, "user.big", big)
        try Sys.setxattr(d, "user.dir", [0, 1, 2, 0])
        XCTAssertEqual(try Sys.getxattr(f, "user.a"), Array("alpha".utf8))
        XCTAssertEqual(try Sys.getxattr(f, "user.empty"), [])
        XCTAssertEqual(try Sys.getxattr(f, "user.big"), big)
        XCTAssertEqual(try Sys.listxattr(f), ["user.a", "user.big", "user.empty"])
        XCTAssertErrno(EEXIST, "XATTR_CREATE on an existing name") { try Sys.setxattr(f, "user.a", [9], flags: twin_XATTR_CREATE) }
        XCTAssertErrno(ENODATA, "XATTR_REPLACE of a missing name") { try Sys.setxattr(f, "user.b", [9], flags: twin_XATTR_REPLACE) }
        try Sys.setxattr(f, "user.a", Array("beta".utf8), flags: twin_XATTR_REPLACE)
        XCTAssertEqual(try Sys.getxattr(f, "user.a"), Array("beta".utf8))
        try Sys.removexattr(f, "user.empty")
        XCTAssertErrno(ENODATA) { try Sys.removexattr(f, "user.empty") }
        try Sys.link(f, m.mountpoint + "/hard")
        XCTAssertEqual(try Sys.getxattr(m.mountpoint + "/hard", "user.a"), Array("beta".utf8), "xattrs belong to the inode")

        XCTAssertEqual(m.unmount()?.status, 0)
        m = try mount(store, at: "again")
        XCTAssertEqual(try Sys.listxattr(m.mountpoint + "/f"), ["user.a", "user.big"])
        XCTAssertEqual(try Sys.getxattr(m.mountpoint + "/f", "user.big"), big, "xattrs survive a remount")
        XCTAssertEqual(try Sys.getxattr(m.mountpoint + "/d", "user.dir"), [0, 1, 2, 0])
    }
}
