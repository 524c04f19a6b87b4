// PeerLinkTests — the verify frames: every kind round-trips, malformed payloads end in typed errors, they never
// pass for core messages (nor the reverse), the largest image fits a frame, and two real links carry them both
// ways as `.verify` events, interleaved with core messages whose order they do not disturb.
import Foundation
import MirrorCore
import XCTest
@testable import PeerLink

enum VerifyGen {
    static func entry(_ r: inout SeededRandom) -> VerifyEntry {
        VerifyEntry(location: Gen.location(&r), version: Gen.u64(&r), sum: r.bytes(Bool.random(using: &r) ? 16 : Int.random(in: 0...64, using: &r)),
                    flags: VerifyEntry.Flags(rawValue: UInt8.random(in: 0...15, using: &r)))
    }

    static func message(_ r: inout SeededRandom, kind: Int? = nil, maxDataBytes: Int = 2048) -> VerifyMessage {
        let id = Gen.u64(&r)
        switch kind ?? Int.random(in: 0..<6, using: &r) {
        case 0: return .check(id: id, locations: Gen.locations(&r, max: 40))
        case 1: return .fetch(id: id, location: Gen.location(&r))
        case 2:
            return .store(id: id, location: Gen.location(&r), version: Gen.u64(&r), sameVersion: Bool.random(using: &r),
                          bytes: r.bytes(Int.random(in: 0...maxDataBytes, using: &r)))
        case 3: return .checked(id: id, entries: (0..<Int.random(in: 0...40, using: &r)).map { _ in entry(&r) })
        case 4:
            return .image(id: id, location: Gen.location(&r), version: Gen.u64(&r),
                          bytes: Bool.random(using: &r) ? r.bytes(Int.random(in: 0...maxDataBytes, using: &r)) : nil)
        default:
            let words = ["stored", "this copy changed meanwhile", "écrit", "ENOSPC: no space left on device", ""]
            return .stored(id: id, applied: Bool.random(using: &r), detail: words[Int.random(in: 0..<words.count, using: &r)])
        }
    }
    static let kinds = 6
}

final class VerifyCodecTests: XCTestCase {
    func testEveryVerifyKindRoundTripsOverSeededRandomInstances() throws {
        var r = SeededRandom(seed: 0x5EED_7E21)
        var seen = Set<String>()
        for _ in 0..<5_000 {
            let m = VerifyGen.message(&r)
            let (type, payload) = VerifyCodec.encode(m)
            XCTAssertEqual(type, m.isRequest ? .verifyRequest : .verifyAnswer)
            XCTAssertFalse(type.isMessage, "verify frames are link-level, below 0x10")
            XCTAssertEqual(try VerifyCodec.decode(type, payload), m)
            seen.insert("\(type)/\(payload[0])")
        }
        XCTAssertEqual(seen.count, VerifyGen.kinds, "the generator reaches every kind: \(seen.sorted())")
    }

    func testVerifyFramesAreNeverCoreMessagesAndCoreFramesAreNeverVerifyMessages() throws {
        var r = SeededRandom(seed: 3)
        let (t, p) = VerifyCodec.encode(VerifyGen.message(&r, kind: 0))
        XCTAssertThrowsError(try MessageCodec.decode(t, p)) {
            guard case .unexpectedFrameType = $0 as? DecodeError else { return XCTFail("\($0)") }
        }
        let (mt, mp) = MessageCodec.encode(.release(Release(locations: [.inode(1)])))
        XCTAssertThrowsError(try VerifyCodec.decode(mt, mp)) {
            guard case .unexpectedFrameType = $0 as? DecodeError else { return XCTFail("\($0)") }
        }
    }

    func testMalformedVerifyPayloadsEndInTypedErrors() throws {
        // An unknown kind.
        XCTAssertThrowsError(try VerifyCodec.decode(.verifyRequest, [9] + [UInt8](repeating: 0, count: 8))) {
            XCTAssertEqual($0 as? DecodeError, .badTag(field: "verify.kind", value: 9))
        }
        // Flags this version does not define.
        var w = ByteWriter()
        w.u8(1); w.u64(7); w.u32(1); w.u64(1); w.u64(0); w.u64(5); w.u8(0x10); w.u8(0)
        XCTAssertThrowsError(try VerifyCodec.decode(.verifyAnswer, w.bytes)) {
            XCTAssertEqual($0 as? DecodeError, .badTag(field: "verify.entry.flags", value: 0x10))
        }
        // A checksum longer than any this version sends.
        w = ByteWriter()
        w.u8(1); w.u64(7); w.u32(1); w.u64(1); w.u64(0); w.u64(5); w.u8(0); w.u8(200); w.raw([UInt8](repeating: 1, count: 200))
        XCTAssertThrowsError(try VerifyCodec.decode(.verifyAnswer, w.bytes)) {
            XCTAssertEqual($0 as? DecodeError, .badCount(field: "verify.entry.sumBytes", count: 200, limit: VerifyCodec.maxSumBytes))
        }
        // A count promising more locations than the bytes left is refused before any allocation.
        w = ByteWriter()
        w.u8(1); w.u64(7); w.u32(0xFFFF_FFFF)
        XCTAssertThrowsError(try VerifyCodec.decode(.verifyRequest, w.bytes)) {
            XCTAssertEqual($0 as? DecodeError, .badCount(field: "verify.check.locations", count: 0xFFFF_FFFF, limit: 0))
        }
        // More locations than a check may name, even when the bytes are there.
        let many = VerifyMessage.check(id: 1, locations: (0..<(VerifyCodec.maxLocations + 1)).map { .inode(UInt64($0)) })
        let (t, p) = VerifyCodec.encode(many)
        XCTAssertThrowsError(try VerifyCodec.decode(t, p)) {
            XCTAssertEqual($0 as? DecodeError, .badCount(field: "verify.check.locations", count: VerifyCodec.maxLocations + 1, limit: VerifyCodec.maxLocations))
        }
        // Truncations and trailing bytes of valid payloads.
        var r = SeededRandom(seed: 44)
        for kind in 0..<VerifyGen.kinds {
            let (t, p) = VerifyCodec.encode(VerifyGen.message(&r, kind: kind, maxDataBytes: 32))
            XCTAssertThrowsError(try VerifyCodec.decode(t, Array(p.dropLast()))) {
                // A list one byte short can no longer hold its count: refused as a bad count before it is read.
                switch $0 as? DecodeError {
                case .truncated?, .badCount?: break
                default: XCTFail("kind \(kind): \($0)")
                }
            }
            XCTAssertThrowsError(try VerifyCodec.decode(t, p + [0])) { XCTAssertEqual($0 as? DecodeError, .trailingBytes(1)) }
        }
    }

    func testMutatedVerifyFramesEndInAMessageOrATypedError() {
        var r = SeededRandom(seed: 0xF00D)
        var outcomes: [String: Int] = [:]
        for _ in 0..<20_000 {
            var (t, p) = VerifyCodec.encode(VerifyGen.message(&r, maxDataBytes: 64))
            switch Int.random(in: 0..<4, using: &r) {
            case 0: for _ in 0..<Int.random(in: 1...4, using: &r) where !p.isEmpty { p[Int.random(in: 0..<p.count, using: &r)] ^= 1 << UInt8.random(in: 0...7, using: &r) }
            case 1: p = Array(p.prefix(Int.random(in: 0...p.count, using: &r)))
            case 2 where p.count > 13:
                let i = Int.random(in: 9...(p.count - 4), using: &r)
                for k in 0..<4 { p[i + k] = 0xFF }
            default: t = Bool.random(using: &r) ? .verifyRequest : .verifyAnswer
            }
            do {
                _ = try VerifyCodec.decode(t, p)
                outcomes["ok", default: 0] += 1
            } catch let e as DecodeError {
                outcomes[Mirror(reflecting: e).children.first?.label ?? "\(e)", default: 0] += 1
            } catch {
                XCTFail("untyped error \(error)")
            }
        }
        XCTAssertGreaterThan(outcomes["ok", default: 0], 0)
        XCTAssertGreaterThanOrEqual(outcomes.count, 4, "\(outcomes)")
    }

    func testTheLargestTrackImageFitsInOneFrame() throws {
        let m = VerifyMessage.image(id: .max, location: .track(.max, .max), version: .max, bytes: [UInt8](repeating: 9, count: MessageCodec.maxPayloadDataBytes))
        let (t, p) = VerifyCodec.encode(m)
        XCTAssertLessThanOrEqual(1 + p.count + FrameLimits.macBytes, FrameLimits.defaultMaxFrameBytes)
        XCTAssertEqual(try VerifyCodec.decode(t, p), m)
        let s = VerifyMessage.store(id: 1, location: .track(1, 1), version: 1, sameVersion: true, bytes: [UInt8](repeating: 9, count: MessageCodec.maxPayloadDataBytes))
        let (st, sp) = VerifyCodec.encode(s)
        XCTAssertEqual(try VerifyCodec.decode(st, sp), s)
    }

    func testALongDetailIsCutAtACharacterBoundary() throws {
        let detail = String(repeating: "é", count: VerifyCodec.maxDetailBytes)  // two bytes each
        let (t, p) = VerifyCodec.encode(.stored(id: 1, applied: false, detail: detail + "x"))
        guard case let .stored(_, _, back) = try VerifyCodec.decode(t, p) else { return XCTFail() }
        XCTAssertLessThanOrEqual(back.utf8.count, VerifyCodec.maxDetailBytes)
        XCTAssertTrue(detail.hasPrefix(back))
    }
}

final class VerifyLinkTests: XCTestCase {
    var links: [PeerLink] = []
    override func tearDown() { for l in links { l.stop() }; links.removeAll() }

    func testVerifyFramesTravelBothWaysAsVerifyEventsBesideCoreMessages() throws {
        let ra = Recorder(), rb = Recorder()
        let a = try PeerLink.start(fastConfig(testIdentity(node: 1, expectedPeer: 2))) { ra.record($0) }
        links.append(a)
        let b = try PeerLink.start(fastConfig(testIdentity(node: 2, expectedPeer: 1), peerPort: a.listeningPort!)) { rb.record($0) }
        links.append(b)
        XCTAssertTrue(ra.wait { _ in !ra.connected.isEmpty }); XCTAssertTrue(rb.wait { _ in !rb.connected.isEmpty })
        let epoch = ra.connected[0].0

        var r = SeededRandom(seed: 808)
        let requests = (0..<20).map { i in VerifyGen.message(&r, kind: i % 3) }
        let answers = (0..<20).map { i in VerifyGen.message(&r, kind: 3 + i % 3) }
        let core = Gen.oneOfEach(seed: 9)
        for (i, m) in requests.enumerated() {
            XCTAssertEqual(a.sendVerify(m, epoch: epoch), .queued)
            if i < core.count { XCTAssertTrue(a.send(core[i])) }
        }
        for m in answers { XCTAssertEqual(b.sendVerify(m), .queued) }
        func verifies(_ rec: Recorder) -> [VerifyMessage] {
            rec.events.compactMap { if case let .verify(e, m) = $0, e == epoch { return m }; return nil }
        }
        XCTAssertTrue(rb.wait { _ in verifies(rb).count >= requests.count && rb.messages.count >= min(core.count, requests.count) })
        XCTAssertTrue(ra.wait { _ in verifies(ra).count >= answers.count })
        XCTAssertEqual(verifies(rb), requests, "in order, intact")
        XCTAssertEqual(verifies(ra), answers)
        XCTAssertEqual(rb.messages, Array(core.prefix(requests.count)), "core messages are not disturbed")
        XCTAssertEqual(a.sendVerify(requests[0], epoch: epoch + 1), .notConnected, "a verify frame is tied to its connection")
    }
}
