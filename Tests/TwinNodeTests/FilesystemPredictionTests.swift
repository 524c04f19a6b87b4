// TwinNodeTests — FilesystemPrediction: what a burst of creates marks ahead.
// Owns: the create window (the new file's first track, the next inode numbers and their first tracks, the window
// doubling while creates use it up). Must never: depend on a mounted volume; the policy is pure.

import MirrorCore
import XCTest

@testable import TwinNode

final class FilesystemPredictionTests: XCTestCase {
    let parent: UInt64 = 1

    /// A create of `ino` in `parent` as Volume plans it (the hint lists the numbers after `ino`), needing the given
    /// locations marked; returns the suggestions.
    func create(_ p: inout FilesystemPrediction, _ ino: UInt64, needing: [Location]? = nil) -> [Location] {
        var into: [Location] = []
        let hint = PredictionHint(nextInodes: (1...UInt64(FilesystemPrediction.createWindowInodes)).map { ino + $0 })
        p.predict(needed: needing ?? [.inode(parent), .inode(ino)], hint: hint, into: &into)
        return into
    }

    func testACreateMarksTheNewFilesFirstTrackAndTheNextFilesAhead() {
        var p = FilesystemPrediction()
        let s = Set(create(&p, 100))
        XCTAssertTrue(s.contains(.track(100, 0)), "the new file's first write follows at once")
        let window = UInt64(FilesystemPrediction.initialCreateWindowInodes)
        for ino in 101...(100 + window) {
            XCTAssertTrue(s.contains(.inode(ino)) && s.contains(.track(ino, 0)), "inode \(ino) ahead")
        }
        XCTAssertFalse(s.contains(.inode(101 + window)), "no more than the first window")
    }

    func testTheCreateWindowDoublesWhileCreatesUseItUpAndStopsAtTheCap() {
        var p = FilesystemPrediction()
        var ino: UInt64 = 100
        var windows: [Int] = []
        for _ in 0..<6 {
            let records = create(&p, ino).filter { $0.isInodeRecord && $0.ino > ino }.map(\.ino).sorted()
            windows.append(records.count)
            ino = records.last! + 1  // the next create needs the first number after the window
        }
        XCTAssertEqual(windows, [64, 128, 256, 512, 512, 512])
        XCTAssertLessThanOrEqual(2 * 512 + 3, FilesystemPrediction.maxMarkItems, "the largest create mark fits")
    }

    func testACreateInsideTheWindowKeepsItsSizeAndAFarOneStartsOver() {
        var p = FilesystemPrediction()
        _ = create(&p, 100)  // window 101-164
        _ = create(&p, 165)  // used up: 166-293
        // Number 200 went back (cold): the window stays 128.
        XCTAssertEqual(create(&p, 200).filter { $0.isInodeRecord && $0.ino > 200 }.count, 128)
        // A create far from every window (another burst): the first size again.
        XCTAssertEqual(create(&p, 90_000).filter { $0.isInodeRecord && $0.ino > 90_000 }.count, 64)
    }

    func testACreateNeedingOnlyItsParentDoesNotMarkTheLargestWindow() {
        var p = FilesystemPrediction()
        _ = create(&p, 100)
        // The new record is held already (predicted); the parent went back cold.
        let s = create(&p, 101, needing: [.inode(parent)])
        XCTAssertLessThanOrEqual(s.filter(\.isInodeRecord).count, FilesystemPrediction.initialCreateWindowInodes)
    }
}
