// Mountinfo: reads this mount namespace's mount table whole, for whoever needs it (the daemon's own mounts, the
// store's filesystem, the tests). Never: parse it (each reader wants different fields).
import Foundation

/// The whole of /proc/self/mountinfo. `String(contentsOfFile:)` reads a file the size its stat gives, which is 0
/// for /proc files, in one read: past the first 4 KiB page of mounts (a workstation with snaps or containers) the
/// rest was silently missing.
public func readMountinfo() -> String? {
    guard let data = FileHandle(forReadingAtPath: "/proc/self/mountinfo")?.readDataToEndOfFile() else { return nil }
    return String(decoding: data, as: UTF8.self)
}
