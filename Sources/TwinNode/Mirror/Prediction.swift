// Prediction for the real filesystem: the core's standard policy (sequential windows, whole small files, next
// inode numbers) plus what file creation looks like through FUSE — a new file's record is written, then at
// once its first track (editors, cp, tar, `echo > f`). Marking both ahead, for the new file and for the next
// inode numbers, makes a burst of creates cost one round trip per window instead of one per file (or two per
// window: the create's mark, then the first write's mark for the same new file). The create window doubles
// while creates use it up, so a long burst needs a handful of marks.
// Must never: suggest locations of other nodes' inodes (the core drops what it cannot mark, but a wasted
// mark still costs the peer a persist).
import MirrorCore

public struct FilesystemPrediction: PredictionPolicy {
    var standard: StandardPrediction
    /// Inode numbers the hint of a create lists (Volume's creation plan): the largest create window.
    public static let createWindowInodes = 512
    /// The first create window, doubled each time a create finds the previous window used up.
    public static let initialCreateWindowInodes = 64
    /// Tracks ahead of a sequential writer at most (64 KiB tracks: 256 MiB). The core cuts a mark at its
    /// `maxMarkItems`, so the daemon's configuration must allow this many (MirrorRuntime).
    public static let maxWindowTracks: UInt64 = 4096
    /// Items of the largest mark this policy builds: a window of records and their first tracks, plus the create
    /// itself (parent record, new record, new first track); or a full sequential window plus one write's tracks.
    public static let maxMarkItems = Int(maxWindowTracks) + 256

    /// The create window last marked: the numbers it covered end before `createEnd`.
    var createEnd: UInt64?
    var createWindow = Self.initialCreateWindowInodes

    public init() {
        standard = StandardPrediction(maxWindowTracks: Self.maxWindowTracks, nextInodeCount: Self.createWindowInodes)
    }

    public mutating func predict(needed: [Location], hint: PredictionHint, into: inout [Location]) {
        var hint = hint
        // Volume's creation plan lists the numbers that follow the new inode's: the new inode is the one before.
        var created: UInt64?
        if let first = hint.nextInodes.first, first > 0,
           !needed.contains(where: { $0.isInodeRecord && $0.ino == first - 1 }) {
            // A create whose new record is held already (predicted) but that needs something else (its parent
            // went back cold): the window stays where it is.
            hint.nextInodes = Array(hint.nextInodes.prefix(createWindow))
        } else if let first = hint.nextInodes.first, first > 0 {
            let ino = first - 1
            created = ino
            if let end = createEnd, ino == end {
                // The creates used the whole window up: the next one doubles.
                createWindow = min(createWindow * 2, Self.createWindowInodes)
            } else if let end = createEnd, ino < end, end - ino <= UInt64(createWindow) {
                // Inside the window: part of it went back (cold, or pulled by the peer); keep the size.
            } else {
                createWindow = Self.initialCreateWindowInodes
            }
            hint.nextInodes = Array(hint.nextInodes.prefix(createWindow))
            createEnd = hint.nextInodes.last.map { $0 + 1 }
        }
        let before = into.count
        standard.predict(needed: needed, hint: hint, into: &into)
        let upcoming = Set(hint.nextInodes)
        for l in into[before...] where l.isInodeRecord && upcoming.contains(l.ino) {
            into.append(.track(l.ino, 0))
        }
        // The new file's first track: its first write follows at once.
        if let ino = created { into.append(.track(ino, 0)) }
    }
}
