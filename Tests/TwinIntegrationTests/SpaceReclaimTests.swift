// Space of deleted files comes back: the reaper waits for a pause in the operations before it deletes (so an
// `rm -rf` does not wait for it), but never longer than its bound, however busy the mount stays.
import Foundation
import XCTest

/// A flag one thread clears and another reads.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = true
    var isSet: Bool { lock.withLock { set } }
    func clear() { lock.withLock { set = false } }
}

final class SpaceReclaimTests: MountingTestCase {
    /// Where the store keeps the data of the file at `path` (named by its inode number, as `Store` does).
    private func dataFile(of path: String, in store: String) throws -> String {
        let ino = UInt64(try Sys.stat(path).st_ino)
        return store + "/data/" + String(format: "%02x", Int(ino & 0xff)) + "/" + String(ino, radix: 16)
    }

    private func waitGone(_ path: String, timeoutSeconds: Double) -> Double? {
        let start = Date()
        while Date().timeIntervalSince(start) < timeoutSeconds {
            if !FileManager.default.fileExists(atPath: path) { return Date().timeIntervalSince(start) }
            usleep(20_000)
        }
        return nil
    }

    func testADeletedFilesDataGoesSoonOnAQuietMountAndWithinTheBoundOnABusyOne() throws {
        let m = try freshMount()
        let big = 4 << 20
        for name in ["quiet", "busy"] {
            FileManager.default.createFile(atPath: m.mountpoint + "/" + name, contents: Data(count: big))
        }
        let quietData = try dataFile(of: m.mountpoint + "/quiet", in: m.store)
        let busyData = try dataFile(of: m.mountpoint + "/busy", in: m.store)
        for data in [quietData, busyData] { XCTAssertTrue(FileManager.default.fileExists(atPath: data), "no data file at \(data)") }
        try Sys.unlink(m.mountpoint + "/quiet")
        let quietSeconds = try XCTUnwrap(waitGone(quietData, timeoutSeconds: 10), "the data file of a deleted file stays")
        XCTAssertLessThan(quietSeconds, 1.5, "on a quiet mount the reaper needs only a pause")

        // A writer that never pauses for long: the reaper must not wait for quiet forever.
        let running = Flag()
        let writer = Thread {
            let fd = open(m.mountpoint + "/ticker", O_CREAT | O_WRONLY, 0o644)
            defer { close(fd) }
            var i: off_t = 0
            while running.isSet {
                _ = pwrite(fd, "tick", 4, i % 65536)
                i += 4
                usleep(5_000)
            }
        }
        writer.start()
        defer { running.clear() }
        try Sys.unlink(m.mountpoint + "/busy")
        let busySeconds = waitGone(busyData, timeoutSeconds: 15)
        XCTAssertNotNil(busySeconds, "a busy mount never gave the space of a deleted file back")
        XCTAssertLessThan(busySeconds ?? 99, 6, "the reaper waits at most about its bound (2 s) on a busy mount")
    }
}
