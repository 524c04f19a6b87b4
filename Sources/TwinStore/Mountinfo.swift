// Mountinfo: this mount namespace's mount table, read whole and split into its fields, for whoever needs it (the
// daemon's own mounts, the store's filesystem, the tests). Never: decide anything from it.
import Foundation

/// The whole of /proc/self/mountinfo. `String(contentsOfFile:)` reads a file the size its stat gives, which is 0
/// for /proc files, in one read: past the first 4 KiB page of mounts (a workstation with snaps or containers) the
/// rest was silently missing.
public func readMountinfo() -> String? {
    guard let data = FileHandle(forReadingAtPath: "/proc/self/mountinfo")?.readDataToEndOfFile() else { return nil }
    return String(decoding: data, as: UTF8.self)
}

/// One line of /proc/self/mountinfo ("36 35 98:0 / /mnt rw,noatime master:1 - ext4 /dev/vda1 rw,errors=continue"),
/// its octal escapes (`\040` for a space) decoded.
public struct MountinfoEntry: Sendable, Equatable {
    /// "major:minor" of the mounted device.
    public var device: String
    public var mountpoint: String
    public var fsType: String
    public var source: String
    public var superOptions: [String]

    /// The entries of a mountinfo text (lines that do not parse are left out).
    public static func parse(_ text: String) -> [MountinfoEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash > 4, dash + 1 < fields.count else { return nil }
            return MountinfoEntry(
                device: fields[2], mountpoint: unescape(fields[4]), fsType: fields[dash + 1],
                source: dash + 2 < fields.count ? unescape(fields[dash + 2]) : "",
                superOptions: dash + 3 < fields.count ? fields[dash + 3].split(separator: ",").map(String.init) : [])
        }
    }

    /// The entries of this namespace's mount table now (none if it cannot be read).
    public static func current() -> [MountinfoEntry] { readMountinfo().map(parse) ?? [] }

    static func unescape(_ field: String) -> String {
        var out = ""
        let chars = Array(field)
        var i = 0
        while i < chars.count {
            if chars[i] == "\\", i + 3 < chars.count, let code = UInt8(String(chars[(i + 1)...(i + 3)]), radix: 8) {
                out.append(Character(UnicodeScalar(code)))
                i += 4
            } else {
                out.append(chars[i])
                i += 1
            }
        }
        return out
    }
}
