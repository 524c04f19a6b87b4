// MirrorCoreTests — the 2-bit-per-track bitmap encoding (Bitmaps.swift) against a plain dictionary model.
// Owns: random and adversarial sequences of token/OOS changes, read back through every query the core uses.
// Must never: rely on the core's protocol: this drives LocationBits directly.

@testable import MirrorCore
import XCTest

final class BitmapEncodingTests: XCTestCase {
    /// Reference model: the state of every location set so far.
    struct Model {
        var states: [Location: LocationState] = [:]
        func state(_ l: Location) -> LocationState { states[l] ?? LocationState(token: .none, outOfSync: false) }
    }

    func check(_ bits: LocationBits, _ model: Model, file: StaticString = #filePath, line: UInt = #line) {
        var live: [Location: LocationState] = [:]
        bits.forEachLive { l, s in live[l] = s }
        let expected = model.states.filter { $0.value.token != .none || $0.value.outOfSync }
        XCTAssertEqual(live, expected, "forEachLive differs from the model", file: file, line: line)
        for (l, s) in model.states { XCTAssertEqual(bits.state(l), s, "\(l)", file: file, line: line) }
        XCTAssertEqual(bits.oosCount, expected.values.filter(\.outOfSync).count, file: file, line: line)
        XCTAssertEqual(bits.mosCount, expected.values.filter { $0.token == .mos }.count, file: file, line: line)
        XCTAssertEqual(bits.moosCount, expected.values.filter { $0.token == .moos }.count, file: file, line: line)
        XCTAssertEqual(bits.encodingProblems(), [], file: file, line: line)
        for ino in Set(model.states.keys.map(\.ino)) {
            var oos: [Location] = []
            bits.oosLocations(ino: ino, fromSlot: 0, limit: .max, into: &oos)
            let want = expected.filter { $0.key.ino == ino && $0.value.outOfSync }.keys.sorted()
            XCTAssertEqual(oos, want, "OOS scan of inode \(ino)", file: file, line: line)
            var mos: [Location] = []
            bits.mosLocations(ino: ino, into: &mos)
            XCTAssertEqual(mos.sorted(), expected.filter { $0.key.ino == ino && $0.value.token == .mos }.keys.sorted(),
                           "MOS scan of inode \(ino)", file: file, line: line)
        }
    }

    func testRandomChangesReadBackExactly() {
        for s in [1, 42, 0xC0FFEE] as [UInt64] { randomChanges(seed: s) }
    }

    func randomChanges(seed start: UInt64) {
        var seed = start
        func next() -> UInt64 {  // SplitMix64
            seed &+= 0x9E37_79B9_7F4A_7C15
            var z = seed
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let bits = LocationBits()
        var model = Model()
        for step in 0..<20_000 {
            let l: Location = next() % 9 == 0 ? .inode(1 + next() % 3) : .track(1 + next() % 3, next() % 200)
            var s = model.state(l)
            if next() % 2 == 0 {
                let tok = [TokenState.none, .moos, .mos][Int(next() % 3)]
                bits.setToken(l, tok)
                s.token = tok
            } else {
                let o = next() % 2 == 0
                bits.setOOS(l, o)
                s.outOfSync = o
            }
            model.states[l] = s
            if step % 2_000 == 0 { check(bits, model) }
        }
        check(bits, model)
    }

    /// A restored superset (MOOS + OOS) that the node then rewrites under MOS, track by track: the exceptions grow
    /// until the inode's bulk token flips, so they stay a minority instead of growing with the file.
    func testExceptionsStayAMinorityWhenAnInodesOutOfSyncTokenChanges() {
        let bits = LocationBits()
        var model = Model()
        let n: UInt64 = 4_096
        for t in 0..<n {
            bits.setToken(.track(5, t), .moos); bits.setOOS(.track(5, t), true)
            model.states[.track(5, t)] = LocationState(token: .moos, outOfSync: true)
        }
        XCTAssertEqual(bits.exceptionCount, 0)
        for t in 0..<n * 3 / 4 {
            bits.setToken(.track(5, t), .mos)
            model.states[.track(5, t)] = LocationState(token: .mos, outOfSync: true)
            XCTAssertLessThanOrEqual(bits.exceptionCount, Int(n) / 2 + 1, "after track \(t)")
        }
        XCTAssertEqual(bits.exceptionCount, Int(n) / 4, "the remaining MOOS tracks are the exceptions now")
        XCTAssertEqual(bits.wordBytes, Int(n) * 2 / 8)
        check(bits, model)
    }
}
