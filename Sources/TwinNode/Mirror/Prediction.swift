// Prediction for the real filesystem: the core's standard policy (sequential windows, whole small files, next
// inode numbers) plus what file creation looks like through FUSE — a new file's record is written, then at
// once its first track (editors, cp, tar, `echo > f`). Marking both ahead makes a burst of creates cost one
// round trip per window instead of one per file.
// Must never: suggest locations of other nodes' inodes (the core drops what it cannot mark, but a wasted
// mark still costs the peer a persist).
import MirrorCore

public struct FilesystemPrediction: PredictionPolicy {
    var standard: StandardPrediction
    /// Inode numbers marked ahead on a create that needs a mark (the create-heavy window).
    public static let createWindowInodes = 64

    public init() {
        standard = StandardPrediction(nextInodeCount: Self.createWindowInodes)
    }

    public mutating func predict(needed: [Location], hint: PredictionHint, into: inout [Location]) {
        let before = into.count
        standard.predict(needed: needed, hint: hint, into: &into)
        let upcoming = Set(hint.nextInodes)
        for l in into[before...] where l.isInodeRecord && upcoming.contains(l.ino) {
            into.append(.track(l.ino, 0))
        }
    }
}
