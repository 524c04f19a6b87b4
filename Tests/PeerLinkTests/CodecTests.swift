// PeerLinkTests — the message codec: round trips over seeded random messages, exact field coverage, typed errors.
import Foundation
import MirrorCore
import XCTest
@testable import PeerLink

final class CodecTests: XCTestCase {
    func testEveryMessageKindRoundTripsOverSeededRandomInstances() throws {
        var r = SeededRandom(seed: 0xC0DEC)
        var seen = Set<UInt8>()
        for _ in 0..<20_000 {
            let m = Gen.message(&r)
            let (type, payload) = MessageCodec.encode(m)
            XCTAssertLessThanOrEqual(payload.count, MessageCodec.payloadSizeBound(m), "size bound must hold for \(type)")
            let back = try MessageCodec.decode(type, payload)
            XCTAssertEqual(back, m)
            seen.insert(type.rawValue)
        }
        XCTAssertEqual(seen.count, Gen.messageKinds, "the generator must reach every message kind")
    }

    /// If MirrorCore gains a field, this fails until the codec (and the generator) encode it: otherwise the new field
    /// would silently arrive as its default value.
    func testCodecCoversEveryFieldOfEveryMessageType() {
        let l = Location.track(1, 2), v = Version(counter: 3, node: NodeID(1))
        let expected: [(Any, Int)] = [
            (Hello(node: NodeID(1), epoch: 1, incarnation: 1, clock: 1), 4),
            (MarkItem(location: l, needData: true, predicted: true), 4),
            (Mark(id: 1, items: [], clock: 1), 3),
            (MarkGrant(location: l, data: nil, version: nil), 3),
            (MarkReply(id: 1, granted: [], refused: [], clock: 1), 4),
            (Pull(locations: [], id: 1, forceData: true), 3),
            (PullAnswer(location: l, content: .inSync, prefetched: false, clock: 1, pullID: 1), 5),
            (Receipt(location: l, version: v, durable: true), 3),
            (Push(location: l, payload: Payload([1]), version: v, durable: true), 4),
            (Release(locations: []), 1),
            (l, 2), (v, 2), (Payload([1]), 1),
        ]
        for (value, fields) in expected {
            XCTAssertEqual(Mirror(reflecting: value).children.count, fields,
                           "\(type(of: value)) changed shape: update PeerLink's Codec.swift, its wire version and this test")
        }
    }

    func testLargestTrackFitsInOneFrame() throws {
        let m = Message.push(Push(location: .track(9, 9), payload: Payload([UInt8](repeating: 7, count: 1 << 20)),
                                  version: Version(counter: 5, node: NodeID(2)), durable: true))
        let (type, payload) = MessageCodec.encode(m)
        XCTAssertLessThanOrEqual(1 + payload.count + FrameLimits.macBytes, FrameLimits.defaultMaxFrameBytes)
        XCTAssertEqual(try MessageCodec.decode(type, payload), m)
    }

    func testOversizedMarkReplyIsSplitIntoPartsWithTheSameIDThatTogetherCarryEverything() throws {
        var r = SeededRandom(seed: 77)
        let grants = (0..<40).map { i in
            MarkGrant(location: .track(5, UInt64(i)), data: Payload(r.bytes(100_000)), version: Version(counter: UInt64(i), node: NodeID(1)))
        }
        let refused = (0..<1000).map { Location.track(6, UInt64($0)) }
        let big = MarkReply(id: 42, granted: grants, refused: refused, clock: 99)
        let limit = FrameLimits.defaultMaxFrameBytes - 1 - FrameLimits.macBytes
        let parts = try XCTUnwrap(MessageCodec.split(.markReply(big), maxPayloadBytes: limit))
        XCTAssertGreaterThan(parts.count, 3)
        var allGranted: [MarkGrant] = [], allRefused: [Location] = []
        for p in parts {
            let (type, payload) = MessageCodec.encode(p)
            XCTAssertLessThanOrEqual(payload.count, limit)
            guard case let .markReply(x) = try MessageCodec.decode(type, payload) else { return XCTFail("not a mark reply") }
            XCTAssertEqual(x.id, 42); XCTAssertEqual(x.clock, 99)
            allGranted += x.granted; allRefused += x.refused
        }
        XCTAssertEqual(allGranted, grants); XCTAssertEqual(allRefused, refused)
        // Nothing else is ever split.
        let push = Message.push(Push(location: .track(1, 1), payload: Payload([UInt8](repeating: 1, count: limit)),
                                     version: .zero, durable: false))
        XCTAssertNil(MessageCodec.split(push, maxPayloadBytes: limit))
    }

    func testEachMalformationIsItsOwnTypedError() throws {
        let ack = Message.ack(Receipt(location: .inode(3), version: Version(counter: 1, node: NodeID(2)), durable: true))
        let (t, p) = MessageCodec.encode(ack)
        XCTAssertThrowsError(try MessageCodec.decode(t, Array(p.dropLast()))) {
            guard case .truncated = $0 as? DecodeError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try MessageCodec.decode(t, p + [0])) { XCTAssertEqual($0 as? DecodeError, .trailingBytes(1)) }
        var badBool = p; badBool[badBool.count - 1] = 2
        XCTAssertThrowsError(try MessageCodec.decode(t, badBool)) {
            XCTAssertEqual($0 as? DecodeError, .badTag(field: "ack.durable", value: 2))
        }
        // A count promising more elements than the bytes left is refused before any allocation.
        var w = ByteWriter(); w.u32(0xFFFF_FFFF)
        XCTAssertThrowsError(try MessageCodec.decode(.release, w.bytes)) {
            XCTAssertEqual($0 as? DecodeError, .badCount(field: "release.locations", count: 0xFFFF_FFFF, limit: 0))
        }
        XCTAssertThrowsError(try MessageCodec.decode(.ping, [])) {
            guard case .unexpectedFrameType = $0 as? DecodeError else { return XCTFail("\($0)") }
        }
        var a = FrameAssembler(maxFrameBytes: 1000)
        a.append([0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertThrowsError(try a.next()) { XCTAssertEqual($0 as? DecodeError, .oversized(length: 0xFFFF_FFFF, maxBytes: 1000)) }
        var z = FrameAssembler(maxFrameBytes: 1000)
        z.append([0, 0, 0, 0])
        XCTAssertThrowsError(try z.next()) { XCTAssertEqual($0 as? DecodeError, .undersized(length: 0)) }
    }

    func testAssemblerReturnsTheSameFramesWhateverTheChunking() throws {
        var r = SeededRandom(seed: 5)
        var stream: [UInt8] = [], expected: [Message] = []
        for _ in 0..<300 {
            let m = Gen.message(&r)
            let (t, p) = MessageCodec.encode(m)
            stream += encodeFrame(t, p); expected.append(m)
        }
        for trial in 0..<20 {
            var a = FrameAssembler(maxFrameBytes: FrameLimits.defaultMaxFrameBytes)
            var got: [Message] = [], i = 0
            while i < stream.count {
                let n = trial == 0 ? 1 : Int.random(in: 1...4096, using: &r)
                a.append(stream[i..<min(stream.count, i + n)]); i += n
                while let f = try a.next() { got.append(try MessageCodec.decode(FrameType(rawValue: f.type)!, f.body)) }
                XCTAssertLessThanOrEqual(a.bufferedBytes, FrameLimits.defaultMaxFrameBytes + 4 + 4096)
            }
            XCTAssertEqual(got, expected)
            XCTAssertNoThrow(try a.finish())
        }
    }

    func testCodecThroughput() throws {
        // Measured, not asserted against a number (the machine is shared): printed for Docs/PROTOCOL.md.
        var r = SeededRandom(seed: 11)
        let small = (0..<2000).map { _ in Gen.message(&r, maxItems: 4, maxDataBytes: 0) }
        let track = Message.push(Push(location: .track(1, 1), payload: Payload(r.bytes(64 * 1024)), version: .zero, durable: false))
        var t0 = DispatchTime.now().uptimeNanoseconds
        var n = 0
        for _ in 0..<25 { for m in small { let (t, p) = MessageCodec.encode(m); _ = try MessageCodec.decode(t, p); n += 1 } }
        let smallSec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        t0 = DispatchTime.now().uptimeNanoseconds
        var bytes = 0
        for _ in 0..<300 { let (t, p) = MessageCodec.encode(track); _ = try MessageCodec.decode(t, p); bytes += p.count }
        let trackSec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        print("codec: \(Int(Double(n) / smallSec)) small messages/s encode+decode; 64 KiB pushes: \(Int(Double(bytes) / trackSec / 1e6)) MB/s encode+decode")
        XCTAssertEqual(n, 50_000)
    }
}
