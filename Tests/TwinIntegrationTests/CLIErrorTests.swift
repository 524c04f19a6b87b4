// Bad input to `twinfs init` and `twinfs mount`: each case gets exit status 1, exactly one line
// `twinfs: error: ...` on stderr, and changes nothing (the store's files byte for byte, the mountpoint
// still an unmounted directory with the same contents). Never: accept a refused command that touched data.
import Foundation
import XCTest

/// Every file and directory under a path with its type, mode, size and content digest: what "nothing
/// changed" compares. Modification times are left out on purpose: a content-identical store is unchanged.
/// So is SQLite's `-shm` file: a shared-memory index that any reader rewrites and SQLite rebuilds from the
/// database and its WAL, never data (meta.db and meta.db-wal themselves are compared).
struct TreeSnapshot: Equatable, CustomStringConvertible {
    let entries: [String: String]

    init(_ root: String) {
        var out: [String: String] = [:]
        func visit(_ p: String, _ rel: String) {
            var st = stat()
            guard lstat(p, &st) == 0 else { out[rel] = "missing"; return }
            let type = st.st_mode & S_IFMT
            var line = "mode=\(String(st.st_mode, radix: 8)) uid=\(st.st_uid) gid=\(st.st_gid)"
            if type == S_IFREG {
                line += " size=\(st.st_size) fnv=\(TreeSnapshot.digest(p))"
            } else if type == S_IFLNK {
                line += " -> \((try? FileManager.default.destinationOfSymbolicLink(atPath: p)) ?? "?")"
            }
            out[rel] = line
            if type == S_IFDIR {
                for name in ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted()
                where !name.hasSuffix(".db-shm") {
                    visit(p + "/" + name, rel + "/" + name)
                }
            }
        }
        visit(root, ".")
        entries = out
    }

    /// FNV-1a over the whole file (stores in these tests are small).
    static func digest(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "unreadable" }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }

    var description: String { entries.keys.sorted().map { "\($0): \(entries[$0]!)" }.joined(separator: "\n") }

    func differences(to other: TreeSnapshot) -> String {
        let keys = Set(entries.keys).union(other.entries.keys).sorted()
        return keys.compactMap { k in
            entries[k] == other.entries[k] ? nil : "\(k): \(entries[k] ?? "absent") -> \(other.entries[k] ?? "absent")"
        }.joined(separator: "\n")
    }
}

final class CLIErrorTests: MountingTestCase {
    /// Runs `twinfs ARGS` expecting the one-line error, and checks that `watched` paths did not change.
    private func assertRefused(_ args: [String], mentioning: [String] = [], unchanged watched: [String],
                               file: StaticString = #filePath, line: UInt = #line) {
        let before = watched.map(TreeSnapshot.init)
        let r = Commands.twinfs(args, timeoutSeconds: 60)
        XCTAssertCLIError(r, mentioning: mentioning, file: file, line: line)
        for (path, snap) in zip(watched, before) {
            let after = TreeSnapshot(path)
            XCTAssertEqual(snap, after, "\(path) changed by a refused `twinfs \(args.joined(separator: " "))`:\n\(snap.differences(to: after))",
                           file: file, line: line)
            XCTAssertFalse(MountTable.anyMount(under: path), "\(path) got mounted by a refused command", file: file, line: line)
        }
    }

    /// A store with some content written through a real mount, then cleanly unmounted.
    private func populatedStore() throws -> String {
        let store = try initStore()
        let m = try mount(store, at: "seed-mnt")
        try Sys.mkdir(m.mountpoint + "/docs")
        try Sys.writeFile(m.mountpoint + "/docs/a.txt", Array("precious\n".utf8))
        try Sys.writeFile(m.mountpoint + "/big.bin", [UInt8](repeating: 0xAB, count: 200_000))
        XCTAssertEqual(m.unmount()?.status, 0)
        return store
    }

    /// The store still mounts and still holds what `populatedStore` wrote.
    private func assertStoreIntact(_ store: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let m = try mount(store, at: "check-mnt-\(UUID().uuidString.prefix(8))", file: file, line: line)
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/docs/a.txt"), Array("precious\n".utf8), file: file, line: line)
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/big.bin"), [UInt8](repeating: 0xAB, count: 200_000), file: file, line: line)
        XCTAssertEqual(m.unmount()?.status, 0, file: file, line: line)
    }

    // MARK: init

    func testInitCreatesAStoreInAMissingOrEmptyDirectory() throws {
        let fresh = path("fresh")
        XCTAssertSucceeds(Commands.twinfs(["init", fresh]))
        XCTAssertTrue(FileManager.default.fileExists(atPath: fresh + "/twinfs.conf"))
        let empty = makeDir("empty")
        XCTAssertSucceeds(Commands.twinfs(["init", empty, "--node", "n1", "--track-size", "4K"]))
        let m = try mount(empty)
        try Sys.writeFile(m.mountpoint + "/x", [1, 2, 3])
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/x"), [1, 2, 3])
    }

    func testInitRefusesANonEmptyDirectory() throws {
        let dir = makeDir("occupied")
        try Sys.writeFile(dir + "/keep.txt", Array("mine\n".utf8))
        assertRefused(["init", dir], mentioning: [dir], unchanged: [dir])
    }

    func testInitRefusesAnExistingStore() throws {
        let store = try populatedStore()
        assertRefused(["init", store], mentioning: [store], unchanged: [store])
        try assertStoreIntact(store)
    }

    func testInitRefusesAPathThatIsAFile() throws {
        let f = path("a-file")
        try Sys.writeFile(f, Array("data".utf8))
        assertRefused(["init", f], mentioning: [f], unchanged: [f])
    }

    func testInitRefusesTrackSizesThatAreNotPowersOfTwoFrom4KTo1M() throws {
        for bad in ["3K", "2K", "2M", "96K", "0", "abc", "-64K"] {
            let p = path("store-\(bad)")
            let r = Commands.twinfs(["init", p, "--track-size=\(bad)"])
            XCTAssertCLIError(r)
            XCTAssertFalse(FileManager.default.fileExists(atPath: p), "refused init with --track-size \(bad) left \(p) behind")
        }
        for good in ["4K", "64K", "1M", "4096"] {
            XCTAssertSucceeds(Commands.twinfs(["init", path("ok-\(good)"), "--track-size", good]))
        }
    }

    func testInitRefusesAnInvalidNodeName() throws {
        let p = path("store")
        XCTAssertCLIError(Commands.twinfs(["init", p, "--node", "has space"]))
        XCTAssertCLIError(Commands.twinfs(["init", p, "--node", ""]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: p))
    }

    func testStatusOfAMissingOrForeignStoreFails() throws {
        let missing = path("nothing-here")
        XCTAssertCLIError(Commands.twinfs(["status", missing]), mentioning: [missing])
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing))
        let foreign = makeDir("foreign")
        try Sys.writeFile(foreign + "/x", [1])
        assertRefused(["status", foreign, "--json"], mentioning: [foreign], unchanged: [foreign])
    }

    // MARK: mount: the store

    func testMountRefusesAMissingStore() throws {
        let mnt = makeDir("mnt")
        let missing = path("no-such-store")
        assertRefused(["mount", missing, mnt, "-f"], mentioning: [missing], unchanged: [mnt])
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing), "a refused mount created the store directory")
    }

    func testMountRefusesAForeignDirectory() throws {
        let mnt = makeDir("mnt")
        let foreign = makeDir("home-dir")
        try Sys.writeFile(foreign + "/notes.txt", Array("not a store\n".utf8))
        try Sys.mkdir(foreign + "/data")
        assertRefused(["mount", foreign, mnt, "-f"], mentioning: [foreign], unchanged: [foreign, mnt])
        let empty = makeDir("empty-dir")
        assertRefused(["mount", empty, mnt, "-f"], mentioning: [empty], unchanged: [empty, mnt])
    }

    func testMountRefusesAStoreOfAnotherProgram() throws {
        let mnt = makeDir("mnt")
        let other = makeDir("other")
        try Sys.writeFile(other + "/twinfs.conf", Array("magic = something-else\nformat = 1\n".utf8))
        assertRefused(["mount", other, mnt, "-f"], mentioning: [other], unchanged: [other, mnt])
    }

    func testMountRefusesACorruptIdentityFile() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        let conf = store + "/twinfs.conf"
        let original = try Sys.readAll(conf)
        try Sys.writeFile(conf, Array("magic = twinfs-store\nformat = 1\nvolume = not-a-uuid\n".utf8))
        assertRefused(["mount", store, mnt, "-f"], mentioning: [store], unchanged: [store, mnt])
        try Sys.writeFile(conf, Array(original.prefix(original.count / 2)) + [0xFF, 0x00, 0xFE])
        assertRefused(["mount", store, mnt, "-f"], mentioning: [store], unchanged: [store, mnt])
        try Sys.writeFile(conf, original)
        try assertStoreIntact(store)
    }

    func testMountRefusesACorruptMetadataDatabaseAndDoesNotRepairIt() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        let db = store + "/meta.db"
        XCTAssertTrue(FileManager.default.fileExists(atPath: db), "store layout: meta.db")
        let original = try Sys.readAll(db)
        var garbled = original
        for i in 0..<min(4096, garbled.count) { garbled[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        try Sys.writeFile(db, garbled)
        assertRefused(["mount", store, mnt, "-f"], mentioning: [store], unchanged: [store, mnt])
        try Sys.writeFile(db, original)
        try assertStoreIntact(store)
    }

    func testMountRefusesAStoreOfANewerFormat() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        let conf = store + "/twinfs.conf"
        let original = String(decoding: try Sys.readAll(conf), as: UTF8.self)
        XCTAssertTrue(original.contains("format = 1"), "identity file has `format = 1`:\n\(original)")
        try Sys.writeFile(conf, Array(original.replacingOccurrences(of: "format = 1", with: "format = 99").utf8))
        assertRefused(["mount", store, mnt, "-f"], mentioning: ["format"], unchanged: [store, mnt])
        try Sys.writeFile(conf, Array(original.utf8))
        try assertStoreIntact(store)
    }

    func testMountRefusesAStoreAlreadyMountedByAnotherDaemon() throws {
        let store = try initStore()
        let first = try mount(store)
        try Sys.writeFile(first.mountpoint + "/live", Array("first daemon\n".utf8))
        let mnt2 = makeDir("mnt2")
        assertRefused(["mount", store, mnt2, "-f"], mentioning: [store], unchanged: [mnt2])
        // ... and the daemonizing form, which must not return 0 either.
        assertRefused(["mount", store, mnt2], mentioning: [store], unchanged: [mnt2])
        XCTAssertTrue(first.isRunning, "the first daemon survives the refused second mount")
        XCTAssertEqual(try Sys.readAll(first.mountpoint + "/live"), Array("first daemon\n".utf8))
        try Sys.writeFile(first.mountpoint + "/still-writable", [42])
        XCTAssertEqual(first.unmount()?.status, 0)
    }

    // MARK: mount: the mountpoint

    func testMountRefusesANonEmptyMountpointUnlessNonemptyIsGiven() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        try Sys.writeFile(mnt + "/underneath.txt", Array("hidden by a mount\n".utf8))
        assertRefused(["mount", store, mnt, "-f"], mentioning: [mnt], unchanged: [store, mnt])

        let m = try mount(store, at: "mnt", options: ["allow_other", "nonempty"])
        XCTAssertEqual(try Sys.listDir(m.mountpoint), ["big.bin", "docs"], "the store's root covers the directory")
        XCTAssertEqual(m.unmount()?.status, 0)
        XCTAssertEqual(try Sys.readAll(mnt + "/underneath.txt"), Array("hidden by a mount\n".utf8))
    }

    func testMountRefusesAMissingMountpointOrAFile() throws {
        let store = try populatedStore()
        let missing = path("no-such-mnt")
        assertRefused(["mount", store, missing, "-f"], mentioning: [missing], unchanged: [store])
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing), "a refused mount created the mountpoint")
        let file = path("file-mnt")
        try Sys.writeFile(file, Array("x".utf8))
        assertRefused(["mount", store, file, "-f"], mentioning: [file], unchanged: [store, file])
    }

    // MARK: mount: options and the device

    func testMountRefusesAnUnknownOption() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        assertRefused(["mount", store, mnt, "-f", "-o", "no_such_option"], mentioning: ["no_such_option"], unchanged: [store, mnt])
        assertRefused(["mount", store, mnt, "-f", "-o", "allow_other,bogus=3"], mentioning: ["bogus"], unchanged: [store, mnt])
    }

    /// In a private mount namespace whose /dev has no fuse device, mount fails cleanly.
    func testMountWithoutDevFuseFailsWithOneLine() throws {
        let store = try populatedStore()
        let mnt = makeDir("mnt")
        let before = TreeSnapshot(store)
        let script = "mount -t tmpfs -o mode=755 none /dev && mknod -m 666 /dev/null c 1 3 && exec \(quote(Commands.twinfsBinary)) mount \(quote(store)) \(quote(mnt)) -f"
        let r = Commands.run(["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/bash", "-c", script], timeoutSeconds: 60)
        XCTAssertCLIError(r, mentioning: ["fuse"])
        let after = TreeSnapshot(store)
        XCTAssertEqual(before, after, before.differences(to: after))
        try assertStoreIntact(store)
    }
}
