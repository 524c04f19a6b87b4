// PeerLinkTests — the pure connection machine, two of them wired back to back (no sockets, no clock).
import MirrorCore
import XCTest
@testable import PeerLink

/// Two machines whose sent bytes are fed to each other, with a hand-moved clock.
struct Pair {
    var a: ConnectionMachine
    var b: ConnectionMachine
    var nowUs: UInt64 = 1_000_000
    var eventsA: [ConnectionMachine.Output] = []
    var eventsB: [ConnectionMachine.Output] = []
    /// Bytes in flight, so tests can tamper with them.
    var toA: [[UInt8]] = [], toB: [[UInt8]] = []

    init(_ ia: LinkIdentity, _ ib: LinkIdentity, versionsA: ClosedRange<UInt16> = 1...1, versionsB: ClosedRange<UInt16> = 1...1,
         seed: UInt64 = 1, claimA: PromotionClaim = .none, claimB: PromotionClaim = .none) {
        var r = SeededRandom(seed: seed)
        a = ConnectionMachine(identity: ia, role: .dialer, nonce: r.bytes(32), epochProposal: 3, promotion: claimA, nowUs: nowUs,
                              versions: versionsA)
        b = ConnectionMachine(identity: ib, role: .listener, nonce: r.bytes(32), epochProposal: 7, promotion: claimB, nowUs: nowUs,
                              versions: versionsB)
        var oa: [ConnectionMachine.Output] = [], ob: [ConnectionMachine.Output] = []
        a.start(into: &oa); b.start(into: &ob)
        absorb(oa, fromA: true); absorb(ob, fromA: false)
    }

    mutating func absorb(_ outs: [ConnectionMachine.Output], fromA: Bool) {
        for o in outs {
            if case let .send(bytes) = o { if fromA { toB.append(bytes) } else { toA.append(bytes) } }
            else if fromA { eventsA.append(o) } else { eventsB.append(o) }
        }
    }

    /// Delivers everything in flight until both are quiet.
    mutating func pump() {
        while !toA.isEmpty || !toB.isEmpty {
            if !toB.isEmpty { let x = toB.removeFirst(); var o: [ConnectionMachine.Output] = []; b.receive(x, nowUs: nowUs, into: &o); absorb(o, fromA: false) }
            if !toA.isEmpty { let x = toA.removeFirst(); var o: [ConnectionMachine.Output] = []; a.receive(x, nowUs: nowUs, into: &o); absorb(o, fromA: true) }
        }
    }

    /// Delivers the oldest chunk in flight in one direction.
    mutating func deliverOne(toB: Bool) {
        var o: [ConnectionMachine.Output] = []
        if toB { b.receive(self.toB.removeFirst(), nowUs: nowUs, into: &o); absorb(o, fromA: false) }
        else { a.receive(toA.removeFirst(), nowUs: nowUs, into: &o); absorb(o, fromA: true) }
    }

    mutating func advance(ms: UInt64) {
        nowUs += ms * 1000
        var oa: [ConnectionMachine.Output] = [], ob: [ConnectionMachine.Output] = []
        a.tick(nowUs: nowUs, into: &oa); b.tick(nowUs: nowUs, into: &ob)
        absorb(oa, fromA: true); absorb(ob, fromA: false)
    }
}

func refusal(_ events: [ConnectionMachine.Output]) -> CloseReason? {
    for case let .close(r) in events { return r }
    return nil
}
func delivered(_ events: [ConnectionMachine.Output]) -> [Message] {
    events.compactMap { if case let .deliver(m) = $0 { return m }; return nil }
}
func established(_ events: [ConnectionMachine.Output]) -> SessionInfo? {
    for case let .established(s) in events { return s }
    return nil
}

final class ConnectionMachineTests: XCTestCase {
    func testMatchingPeersAuthenticateAgreeOnEpochAndExchangeSealedMessages() throws {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
        p.pump()
        let sa = try XCTUnwrap(established(p.eventsA)), sb = try XCTUnwrap(established(p.eventsB))
        XCTAssertEqual(sa.epoch, 7); XCTAssertEqual(sb.epoch, 7, "both ends take the larger proposal")
        XCTAssertEqual(sa.peerNode, NodeID(2)); XCTAssertEqual(sb.peerNode, NodeID(1))
        XCTAssertEqual(sa.dialer, NodeID(1)); XCTAssertEqual(sb.dialer, NodeID(1))
        for m in Gen.oneOfEach(seed: 3) {
            let (t, payload) = MessageCodec.encode(m)
            p.toB.append(try XCTUnwrap(p.a.seal(t, payload)))
        }
        p.pump()
        XCTAssertEqual(delivered(p.eventsB), Gen.oneOfEach(seed: 3))
        XCTAssertNil(refusal(p.eventsA)); XCTAssertNil(refusal(p.eventsB))
    }

    func testEachSideLearnsThePeersPromotionClaim() {
        let claimA = PromotionClaim(promotion: 2, peerPromotionSeen: 1, sole: true)
        let claimB = PromotionClaim(promotion: 1, peerPromotionSeen: 0, sole: false)
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2), claimA: claimA, claimB: claimB)
        p.pump()
        XCTAssertEqual(established(p.eventsA)?.peerPromotion, claimB)
        XCTAssertEqual(established(p.eventsB)?.peerPromotion, claimA)
    }

    func testAPromotionClaimChangedInTransitFailsAuthentication() {
        // A man in the middle who flips "sole" off could make a promoted node look like one that gave way.
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2), claimA: PromotionClaim(promotion: 1, peerPromotionSeen: 0, sole: true))
        XCTAssertEqual(p.toB.count, 1, "A's hello is in flight")
        p.toB[0][p.toB[0].count - 1] ^= 1
        p.pump()
        XCTAssertNil(established(p.eventsA)); XCTAssertNil(established(p.eventsB))
        XCTAssertEqual(refusal(p.eventsB)?.refusal?.code, .authenticationFailed)
    }

    func testWrongSecretIsRefusedOnBothSidesWithTheReason() {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2, secret: "a different secret, 16+ bytes"))
        p.pump()
        XCTAssertNil(established(p.eventsA)); XCTAssertNil(established(p.eventsB))
        XCTAssertEqual(refusal(p.eventsA)?.refusal?.code, .authenticationFailed)
        XCTAssertEqual(refusal(p.eventsB)?.refusal?.code, .authenticationFailed)
        XCTAssertTrue(refusal(p.eventsA)!.description.contains("secret"), refusal(p.eventsA)!.description)
    }

    func testDifferentVolumeDuplicateNodeUnexpectedNodeAndVersionAreRefusedBeforeAnyProof() {
        let cases: [(LinkIdentity, LinkIdentity, ClosedRange<UInt16>, Refusal.Code)] = [
            (testIdentity(node: 1), testIdentity(node: 2, volume: "other-volume"), 1...1, .volumeMismatch),
            (testIdentity(node: 4), testIdentity(node: 4), 1...1, .duplicateNodeID),
            (testIdentity(node: 1, expectedPeer: 3), testIdentity(node: 2), 1...1, .unexpectedNode),
            (testIdentity(node: 1), testIdentity(node: 2), 2...3, .unsupportedVersion),
        ]
        for (ia, ib, vb, code) in cases {
            var p = Pair(ia, ib, versionsB: vb)
            p.pump()
            XCTAssertEqual(refusal(p.eventsA)?.refusal?.code, code, "\(code)")
            XCTAssertEqual(refusal(p.eventsB)?.refusal?.code, code, "\(code)")
            XCTAssertNil(established(p.eventsA)); XCTAssertNil(established(p.eventsB))
        }
    }

    func testTheHighestCommonVersionIsChosen() throws {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2), versionsA: 1...4, versionsB: 2...3)
        p.pump()
        XCTAssertEqual(try XCTUnwrap(established(p.eventsA)).version, 3)
        XCTAssertEqual(try XCTUnwrap(established(p.eventsB)).version, 3)
    }

    func testAMessageBeforeAuthenticationIsRefusedAndNeverDelivered() {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
        // Instead of its proof, A's side sends a well-formed protocol message.
        p.toB.removeAll()
        let (t, payload) = MessageCodec.encode(.release(Release(locations: [.inode(1)])))
        var o: [ConnectionMachine.Output] = []
        p.b.receive(encodeFrame(.linkHello, LinkHello(minVersion: 1, maxVersion: 1, volumeID: "vol-test-1", node: NodeID(1),
                                                      nodeName: "x", nonce: [UInt8](repeating: 0, count: 32), epochProposal: 1).encode())
                    + encodeFrame(t, payload), nowUs: p.nowUs, into: &o)
        XCTAssertTrue(delivered(o).isEmpty)
        XCTAssertEqual(refusal(o)?.refusal?.code, .badHandshake)
    }

    func testTamperedReplayedAndReorderedFramesFailTheIntegrityCheck() throws {
        for attack in ["flip", "replay", "reorder", "drop"] {
            var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
            p.pump()
            let frames = try (0..<3).map { i -> [UInt8] in
                let (t, payload) = MessageCodec.encode(.ack(Receipt(location: .inode(UInt64(i)), version: .zero, durable: false)))
                return try XCTUnwrap(p.a.seal(t, payload))
            }
            switch attack {
            case "flip": var f = frames[0]; f[10] ^= 1; p.toB = [f]
            case "replay": p.toB = [frames[0], frames[0]]
            case "reorder": p.toB = [frames[1], frames[0]]
            default: p.toB = [frames[0], frames[2]]
            }
            p.pump()
            let reason = try XCTUnwrap(refusal(p.eventsB), attack)
            XCTAssertEqual(reason.refusal?.code, .protocolError, attack)
            XCTAssertTrue(reason.description.contains("integrity"), reason.description)
            XCTAssertLessThanOrEqual(delivered(p.eventsB).count, 1, attack)
            // The peer learns why, through a sealed refusal it can verify.
            XCTAssertEqual(refusal(p.eventsA)?.refusal?.code, .protocolError, attack)
        }
    }

    func testHeartbeatsMeasureRTTAndSilenceClosesTheConnection() throws {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
        p.pump()
        p.advance(ms: 1_000)        // both send a ping
        let sent = p.nowUs
        p.nowUs += 3_000            // 3 ms on the wire
        p.pump()
        let rtts = p.eventsA.compactMap { if case let .rtt(us) = $0 { return us }; return nil }
        XCTAssertEqual(rtts, [p.nowUs - sent])
        // B goes silent: A gives up after the silence timeout, not before.
        p.advance(ms: 3_000); p.toA.removeAll(); p.toB.removeAll()
        XCTAssertNil(refusal(p.eventsA))
        p.advance(ms: 2_100)
        guard case .peerSilent = try XCTUnwrap(refusal(p.eventsA)) else { return XCTFail("\(p.eventsA)") }
    }

    func testAnUnfinishedHandshakeTimesOut() {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
        p.toB.removeAll()           // A's hello never arrives
        p.advance(ms: 4_900)
        XCTAssertNil(refusal(p.eventsB))
        p.advance(ms: 200)
        XCTAssertEqual(refusal(p.eventsB)?.refusal?.code, .timeout)
    }

    func testRefusalTextFromThePeerCannotForgeLogLines() throws {
        var o: [ConnectionMachine.Output] = []
        var m = ConnectionMachine(identity: testIdentity(node: 1), role: .dialer, nonce: [UInt8](repeating: 1, count: 32),
                                  epochProposal: 1, nowUs: 0)
        m.start(into: &o); o.removeAll()
        m.receive(encodeFrame(.refuse, Refusal(.busy, "go away\nFAKE LOG LINE").encode()), nowUs: 1, into: &o)
        let r = try XCTUnwrap(refusal(o)?.refusal)
        XCTAssertEqual(r.code, .busy); XCTAssertFalse(r.reason.contains("\n")); XCTAssertTrue(r.reason.hasPrefix("go away"))
    }

    /// Found by the TCP restart test: a node stopping after it sent `ready` but before the peer's `ready` arrived
    /// sent its goodbye unsealed, and the peer (already open) saw a forged frame instead of the reason.
    func testAGoodbyeBetweenOwnReadyAndThePeersReadyIsSealedAndUnderstood() {
        var p = Pair(testIdentity(node: 1), testIdentity(node: 2))
        p.deliverOne(toB: true); p.deliverOne(toB: false)      // hellos; each answers with its proof
        p.deliverOne(toB: true); p.deliverOne(toB: false)      // proofs; each answers with its ready
        p.deliverOne(toB: true)                                // B reads A's ready: B is open, A is not yet
        XCTAssertNotNil(established(p.eventsB)); XCTAssertNil(established(p.eventsA))
        var o: [ConnectionMachine.Output] = []
        p.a.close(Refusal(.goingAway, "node1 is stopping"), as: .stopped, into: &o)
        p.absorb(o, fromA: true)
        p.toA.removeAll()
        p.pump()
        XCTAssertEqual(refusal(p.eventsB), .refusedByPeer(Refusal(.goingAway, "node1 is stopping")))
    }
}
