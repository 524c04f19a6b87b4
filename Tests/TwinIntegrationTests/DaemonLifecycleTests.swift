// How a twinfs daemon starts and ends: readiness, the three clean ways to stop it (SIGTERM, SIGINT,
// fusermount3 -u), each with exit 0, the store lock released and the data durable; the daemonizing
// default; and `twinfs status`. Never: sleeps as synchronization (the readiness line and exit are the signals).
import Foundation
import XCTest

final class DaemonLifecycleTests: MountingTestCase {
    /// Writes a file through the mount, stops the daemon with `stop`, and checks exit 0, the mount gone,
    /// the lock released (a second mount of the same store works) and the file intact there.
    private func assertCleanStop(_ how: String, file: StaticString = #filePath, line: UInt = #line,
                                 _ stop: (TwinMount) -> Void) throws {
        let store = try initStore()
        let first = try mount(store)
        var rng = SplitMix64(seed: 7)
        let content = rng.bytes(300_000)
        try Sys.writeFile(first.mountpoint + "/kept.bin", content)
        try Sys.mkdir(first.mountpoint + "/dir")
        try Sys.symlink("kept.bin", first.mountpoint + "/dir/link")

        stop(first)
        let exit = first.waitForExit(timeoutSeconds: 30)
        XCTAssertNotNil(exit, "daemon still running 30 s after \(how)\n\(first.daemonLog())", file: file, line: line)
        if let exit {
            XCTAssertFalse(exit.signaled, "daemon died of signal \(exit.status) after \(how)\n\(first.daemonLog())", file: file, line: line)
            XCTAssertEqual(exit.status, 0, "daemon exit status after \(how)\n\(first.daemonLog())", file: file, line: line)
        }
        XCTAssertFalse(MountTable.isMounted(first.mountpoint), "\(first.mountpoint) still mounted after \(how)", file: file, line: line)

        let second = try mount(store, at: "mnt2")
        XCTAssertEqual(try Sys.readAll(second.mountpoint + "/kept.bin"), content, "data after \(how) and remount", file: file, line: line)
        XCTAssertEqual(try Sys.readlink(second.mountpoint + "/dir/link"), "kept.bin", file: file, line: line)
        XCTAssertEqual(second.unmount()?.status, 0, file: file, line: line)
    }

    func testSIGTERMEndsTheDaemonCleanly() throws {
        try assertCleanStop("SIGTERM") { $0.signal(SIGTERM) }
    }

    func testSIGINTEndsTheDaemonCleanly() throws {
        try assertCleanStop("SIGINT") { $0.signal(SIGINT) }
    }

    func testFusermountUnmountEndsTheDaemonCleanly() throws {
        try assertCleanStop("fusermount3 -u") { m in
            XCTAssertSucceeds(Commands.run(["/usr/bin/fusermount3", "-u", m.mountpoint]))
        }
    }

    func testReadinessLineMeansTheMountIsLiveAndEmpty() throws {
        let m = try freshMount()
        // TwinMount already checked the exact line and /proc/self/mountinfo; the root must be usable at once.
        XCTAssertEqual(try Sys.listDir(m.mountpoint), [])
        let st = try Sys.stat(m.mountpoint)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFDIR)
        XCTAssertEqual(MountTable.fsType(at: m.mountpoint).map { $0.hasPrefix("fuse") }, true,
                       "fs type \(MountTable.fsType(at: m.mountpoint) ?? "nil")")
    }

    /// Without -f, `twinfs mount` returns only once the mount is live, and the daemon lives on until unmounted.
    func testMountWithoutForegroundDaemonizesAndReturnsWhenReady() throws {
        let store = try initStore()
        let mnt = makeDir("mnt")
        let r = Commands.twinfs(["mount", store, mnt], timeoutSeconds: 60)
        defer {
            if MountTable.isMounted(mnt) { Commands.run(["/usr/bin/fusermount3", "-u", mnt]) }
            waitForDaemon(store: store, mountpoint: mnt)
        }
        XCTAssertSucceeds(r, "twinfs mount (daemonizing)")
        XCTAssertTrue(MountTable.isMounted(mnt), "mounted when `twinfs mount` returned")
        try Sys.writeFile(mnt + "/hello", Array("hello\n".utf8))
        XCTAssertEqual(try Sys.readAll(mnt + "/hello"), Array("hello\n".utf8))
        XCTAssertSucceeds(Commands.run(["/usr/bin/fusermount3", "-u", mnt]))
        XCTAssertFalse(MountTable.isMounted(mnt))
        waitForDaemon(store: store, mountpoint: mnt)
        let again = try mount(store, at: "mnt2")
        XCTAssertEqual(try Sys.readAll(again.mountpoint + "/hello"), Array("hello\n".utf8))
    }

    /// Scripts capture output (`out=$(twinfs mount S M 2>&1)`, Python's subprocess.run(capture_output=True)):
    /// they wait for EOF on the pipes, so the daemon must not keep the caller's stdout or stderr open.
    func testDaemonizingMountReturnsWhenItsOutputIsCaptured() throws {
        let store = try initStore()
        let mnt = makeDir("mnt")
        defer {
            if MountTable.isMounted(mnt) { Commands.run(["/usr/bin/fusermount3", "-u", mnt]) }
            waitForDaemon(store: store, mountpoint: mnt)
        }
        let r = Commands.sh("""
        out=$(timeout 10 \(quote(Commands.twinfsBinary)) mount \(quote(store)) \(quote(mnt)) 2>&1) || { echo "rc=$? out=$out" >&2; exit 1; }
        printf 'captured: %s\\n' "$out"
        """, timeoutSeconds: 20)
        XCTAssertSucceeds(r, "`$(twinfs mount ... 2>&1)` returns once mounted (timeout 10 s otherwise)")
        XCTAssertTrue(MountTable.isMounted(mnt))
    }

    /// The daemonized process is not our child: find it by the unique store and mountpoint paths in its command
    /// line (only this test's own daemon can have them) and wait, bounded, until it has exited.
    private func waitForDaemon(store: String, mountpoint: String) {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let alive = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).contains { pid in
                guard Int(pid) != nil,
                      let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                return args.contains(store) && args.contains(mountpoint) && args.contains("mount")
            }
            if !alive { return }
            usleep(20_000)
        }
        XCTFail("the daemonized twinfs for \(store) did not exit within 30 s of its unmount")
    }

    func testStatusReportsIdentityTrackSizeAndCounts() throws {
        let store = try initStore(node: "alpha", trackSize: "64K")
        let before = Commands.twinfs(["status", store])
        XCTAssertSucceeds(before)
        XCTAssertTrue(before.stdout.contains("alpha"), "status names the node\n\(before)")
        XCTAssertTrue(before.stdout.contains("65536") || before.stdout.contains("64K") || before.stdout.contains("64 KiB"),
                      "status shows the track size\n\(before)")

        let m = try mount(store)
        for i in 0..<20 { try Sys.writeFile(m.mountpoint + "/f\(i)", [UInt8](repeating: UInt8(i), count: 200_000)) }
        let live = Commands.twinfs(["status", store])
        XCTAssertSucceeds(live, "status of a mounted store (an operator inspecting a live node)")
        XCTAssertTrue(live.stdout.contains("alpha"), "\(live)")
        XCTAssertEqual(m.unmount()?.status, 0)

        let json = Commands.twinfs(["status", store, "--json"])
        XCTAssertSucceeds(json)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any] else {
            return XCTFail("status --json is not one JSON object\n\(json)")
        }
        let flat = flatten(obj)
        XCTAssertTrue(flat.values.contains { "\($0)" == "alpha" }, "node name in \(flat)")
        XCTAssertTrue(flat.values.contains { "\($0)" == "65536" }, "track size in bytes in \(flat)")
        let inodes = flat.first { $0.key.lowercased().contains("inode") }.flatMap { Int("\($0.value)") }
        let tracks = flat.first { $0.key.lowercased().contains("track") && !$0.key.lowercased().contains("size") }
            .flatMap { Int("\($0.value)") }
        XCTAssertNotNil(inodes, "an inode count in \(flat)")
        XCTAssertNotNil(tracks, "a track count in \(flat)")
        // 20 files plus the root; 200,000 bytes is 4 tracks of 64 KiB each.
        XCTAssertGreaterThanOrEqual(inodes ?? 0, 21, "inode count in \(flat)")
        XCTAssertGreaterThanOrEqual(tracks ?? 0, 80, "track count in \(flat)")
        let volume = flat.first { $0.key.lowercased().contains("volume") }
        XCTAssertNotNil(volume, "a volume id in \(flat)")
    }

    private func flatten(_ obj: [String: Any], prefix: String = "") -> [String: Any] {
        var out: [String: Any] = [:]
        for (k, v) in obj {
            if let sub = v as? [String: Any] { out.merge(flatten(sub, prefix: prefix + k + ".")) { a, _ in a } }
            else { out[prefix + k] = v }
        }
        return out
    }
}
