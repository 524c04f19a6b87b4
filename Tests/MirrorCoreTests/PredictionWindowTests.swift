// MirrorCoreTests — the sequential window of StandardPrediction, on the policy alone (no pair).
// Owns: how the window grows, what one large write counts as, and what a stream does when part of its window
// went back. Must never: depend on a pair or on timing; the policy is a pure function of what it is shown.

import MirrorCore
import XCTest

final class PredictionWindowTests: XCTestCase {
    /// The tracks one write of `count` tracks from `first` needs marked, and what the policy adds to them.
    func predicted(_ p: inout StandardPrediction, ino: UInt64 = 9, first: UInt64, count: UInt64) -> [UInt64] {
        var into: [Location] = []
        let needed = (first..<first + count).map { Location.track(ino, $0) }
        p.predict(needed: needed, hint: PredictionHint(fileTrackCount: first + count), into: &into)
        return into.compactMap(\.trackIndex)
    }

    func testAWriterThatUsesItsWindowUpDoublesItToTheCap() {
        var p = StandardPrediction(initialWindowTracks: 4, maxWindowTracks: 64, smallFileTracks: 0)
        var next: UInt64 = 0
        var windows: [Int] = []
        // Each write needs exactly the first track after the previous window (everything before it is held).
        for _ in 0..<7 {
            let ahead = predicted(&p, first: next, count: 1)
            windows.append(ahead.count)
            XCTAssertEqual(ahead.first, next + 1, "the window starts right after the write")
            next = ahead.last! + 1
        }
        XCTAssertEqual(windows, [4, 8, 16, 32, 64, 64, 64])
    }

    func testOneLargeWriteIsOneStepOfTheStreamNotOnePerTrack() {
        var p = StandardPrediction(initialWindowTracks: 4, maxWindowTracks: 4096, smallFileTracks: 0)
        // A 1 MiB write of 16 tracks, at a place nobody wrote before: a window as long as the write, not the cap.
        XCTAssertEqual(predicted(&p, first: 1000, count: 16), Array(1016..<1032))
        // Random large writes elsewhere in the file stay at that size.
        XCTAssertEqual(predicted(&p, first: 50, count: 16).count, 16)
        XCTAssertEqual(predicted(&p, first: 7000, count: 16).count, 16)
    }

    func testLargeSequentialWritesDoubleFromTheirOwnLength() {
        var p = StandardPrediction(initialWindowTracks: 4, maxWindowTracks: 4096, smallFileTracks: 0)
        var next: UInt64 = 0
        var windows: [Int] = []
        while windows.count < 10 {
            let ahead = predicted(&p, first: next, count: 16)
            windows.append(ahead.count)
            next = ahead.last! + 1
        }
        XCTAssertEqual(windows, [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 4096])
    }

    func testAWriterFindingAHoleInItsWindowKeepsTheWindowSize() {
        var p = StandardPrediction(initialWindowTracks: 4, maxWindowTracks: 64, smallFileTracks: 0)
        _ = predicted(&p, first: 0, count: 1)          // window 4: tracks 1-4
        let second = predicted(&p, first: 5, count: 1)  // used up: window 8, tracks 6-13
        XCTAssertEqual(second.count, 8)
        // Track 9 went back (released, or pulled by the peer): the writer needs it again inside the window.
        let hole = predicted(&p, first: 9, count: 1)
        XCTAssertEqual(hole.count, 8, "the same window, not a doubled one")
        XCTAssertEqual(hole.first, 10)
        // Far away from the window: a new stream.
        XCTAssertEqual(predicted(&p, first: 500, count: 1).count, 4)
    }
}
