// PeerLinkTests — decoder fuzzing: seeded random bytes, mutated valid frames, truncations, forged lengths.
// Every input must end in a message or a typed DecodeError, with bounded buffering and time.
import Foundation
import MirrorCore
import XCTest
@testable import PeerLink

final class FuzzTests: XCTestCase {
    /// Valid encoded frames to mutate.
    func corpus(_ r: inout SeededRandom) -> [[UInt8]] {
        (0..<400).map { _ in
            let (t, p) = MessageCodec.encode(Gen.message(&r, maxItems: 6, maxDataBytes: 64))
            return encodeFrame(t, p)
        }
    }

    func mutate(_ f: [UInt8], _ r: inout SeededRandom) -> [UInt8] {
        var x = f
        switch Int.random(in: 0..<7, using: &r) {
        case 0:                                          // flip bits
            for _ in 0..<Int.random(in: 1...4, using: &r) where !x.isEmpty { x[Int.random(in: 0..<x.count, using: &r)] ^= 1 << UInt8.random(in: 0...7, using: &r) }
        case 1: x = Array(x.prefix(Int.random(in: 0...x.count, using: &r)))    // truncate
        case 2: x += r.bytes(Int.random(in: 1...8, using: &r))                 // trailing garbage
        case 3 where x.count >= 4:                       // forge the length field (huge, or off by a little)
            let l: UInt32 = Bool.random(using: &r) ? UInt32.random(in: 0...UInt32.max, using: &r)
                : UInt32(max(0, x.count - 4 + Int.random(in: -3...3, using: &r)))
            x[0] = UInt8(l >> 24); x[1] = UInt8(truncatingIfNeeded: l >> 16); x[2] = UInt8(truncatingIfNeeded: l >> 8); x[3] = UInt8(truncatingIfNeeded: l)
        case 4 where x.count > 5: x[4] = UInt8.random(in: 0...255, using: &r)  // frame type
        case 5 where x.count > 9:                        // forge an inner count/length: overwrite 4 bytes with big values
            let i = Int.random(in: 5...(x.count - 4), using: &r)
            for k in 0..<4 { x[i + k] = Bool.random(using: &r) ? 0xFF : UInt8.random(in: 0...255, using: &r) }
        default: x = r.bytes(Int.random(in: 0...64, using: &r))                // pure noise
        }
        return x
    }

    /// Decodes a whole input as a stream of frames: every outcome is a list of messages, then nothing, a typed
    /// error, or a truncation at the end.
    func decodeAll(_ input: [UInt8], maxFrameBytes: Int) -> (messages: Int, error: DecodeError?, maxBuffered: Int) {
        var a = FrameAssembler(maxFrameBytes: maxFrameBytes)
        a.append(input)
        var n = 0
        do {
            while let f = try a.next() {
                guard let t = FrameType(rawValue: f.type) else { throw DecodeError.unknownFrameType(f.type) }
                _ = try MessageCodec.decode(t, f.body); n += 1
            }
            try a.finish()
            return (n, nil, a.bufferedBytes)
        } catch {
            return (n, error as? DecodeError ?? .badMagic(0xDEAD), a.bufferedBytes)
        }
    }

    func testHundredThousandsOfMalformedInputsEndInAMessageOrATypedError() {
        var r = SeededRandom(seed: 0xF022)
        let frames = corpus(&r)
        let start = DispatchTime.now().uptimeNanoseconds
        var outcomes = [String: Int]()
        let inputs = 150_000
        for i in 0..<inputs {
            let input: [UInt8]
            if i % 10 == 0 { input = r.bytes(Int.random(in: 0...48, using: &r)) }
            else {
                var x = mutate(frames[Int.random(in: 0..<frames.count, using: &r)], &r)
                if i % 7 == 0 { x = mutate(x, &r) }
                if i % 5 == 0 { x += frames[Int.random(in: 0..<frames.count, using: &r)] }   // a valid frame after it
                input = x
            }
            let res = decodeAll(input, maxFrameBytes: FrameLimits.defaultMaxFrameBytes)
            XCTAssertLessThanOrEqual(res.maxBuffered, input.count)
            let key: String
            if let e = res.error { key = String("\(Mirror(reflecting: e).children.first?.label ?? "\(e)")") } else { key = "ok" }
            outcomes[key, default: 0] += 1
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print("fuzz: \(inputs) inputs in \(String(format: "%.2f", seconds)) s; outcomes: \(outcomes.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(outcomes["ok", default: 0], 0, "some mutations stay valid")
        XCTAssertGreaterThanOrEqual(outcomes.count, 6, "the mutations reach many distinct errors: \(outcomes)")
        XCTAssertLessThan(seconds, 60, "bounded time")
    }

    func testAForgedHugeLengthIsRefusedAtOnceWithoutWaitingForTheBody() {
        var a = FrameAssembler(maxFrameBytes: FrameLimits.defaultMaxFrameBytes)
        a.append([0x7F, 0xFF, 0xFF, 0xFF, 0x16])
        XCTAssertThrowsError(try a.next()) {
            XCTAssertEqual($0 as? DecodeError, .oversized(length: 0x7FFF_FFFF, maxBytes: FrameLimits.defaultMaxFrameBytes))
        }
        // A length within the limit waits for its body, buffering only what arrived.
        var b = FrameAssembler(maxFrameBytes: FrameLimits.defaultMaxFrameBytes)
        b.append([0x00, 0x10, 0x00, 0x00, 0x16, 1, 2, 3])
        XCTAssertNil(try b.next())
        XCTAssertEqual(b.bufferedBytes, 8)
        XCTAssertThrowsError(try b.finish()) { guard case .truncated = $0 as? DecodeError else { return XCTFail("\($0)") } }
    }

    /// The connection machine under garbage: before authentication (the port's exposure) and after it (a corrupted
    /// stream): always a close with a reason, never a delivered message before authentication.
    func testTheConnectionMachineRefusesGarbageInEveryPhase() throws {
        var r = SeededRandom(seed: 0xBAD)
        let frames = corpus(&r)
        var closedPreAuth = 0, closedOpen = 0
        // Pre-authentication inputs are cheap; an open pair costs a handshake (HMAC, HKDF), so fewer of those.
        for i in 0..<12_000 {
            var o: [ConnectionMachine.Output] = []
            if i % 6 != 0 {
                var m = ConnectionMachine(identity: testIdentity(node: 2), role: .listener, nonce: r.bytes(32), epochProposal: 1, nowUs: 0)
                m.start(into: &o); o.removeAll()
                var input = i % 4 == 0 ? r.bytes(Int.random(in: 1...2000, using: &r)) : mutate(frames[i % frames.count], &r)
                if input.isEmpty { input = [0] }
                // Split in random chunks, as TCP would.
                var k = 0
                while k < input.count && !m.isClosed {
                    let n = Int.random(in: 1...64, using: &r)
                    m.receive(input[k..<min(input.count, k + n)], nowUs: 1, into: &o); k += n
                }
                if !m.isClosed { m.receiveEOF(into: &o) }
                XCTAssertTrue(delivered(o).isEmpty && established(o) == nil)
                XCTAssertNotNil(refusal(o)); closedPreAuth += 1
            } else {
                var p = Pair(testIdentity(node: 1), testIdentity(node: 2), seed: UInt64(i))
                p.pump()
                var input = mutate(frames[i % frames.count], &r)
                if input == frames[i % frames.count] || input.isEmpty { input = [0, 0, 0, 1, 0x16] }
                var ob: [ConnectionMachine.Output] = []
                p.b.receive(input, nowUs: p.nowUs, into: &ob)
                if !p.b.isClosed { p.b.receiveEOF(into: &ob) }
                XCTAssertNotNil(refusal(ob)); closedOpen += 1
                XCTAssertTrue(delivered(ob).isEmpty, "an unsealed frame is never delivered")
            }
        }
        XCTAssertEqual(closedPreAuth, 10_000); XCTAssertEqual(closedOpen, 2_000)
    }
}
