// MirrorCoreTests — liveness under contention (TESTING.md finding 7): a read waiting for a pull answer is not starved
// by the peer's marks for the same location.
// Owns: one core driven directly, with the peer's messages scripted, so the test controls exactly which peer message
// arrives between our pull and its answer (any order the peer's FIFO link allows).
// Must never: depend on a second core's scheduling; the peer here is a script.

import MirrorCore
import XCTest

final class ReadFairnessTests: XCTestCase {
    let L = Location.track(2, 0)
    let peerClock: UInt64 = 1

    /// Node B (id 2) with MOOS for L, connected, every persist durable at once.
    final class Node {
        let core: MirrorNode
        var sent: [Message] = []
        var granted: Set<OperationID> = []

        init(moos l: Location) {
            core = MirrorNode(config: MirrorConfig(node: NodeID(2), peer: NodeID(1)), prediction: NoPrediction(),
                              recovered: RecoveredState(entries: [PersistEntry(l, .moos)], clockReservation: 1 << 16,
                                                        incarnation: 1))
            feed(.connectionUp(epoch: 1))
        }

        func feed(_ e: Event) {
            var queue = [e]
            while !queue.isEmpty {
                for a in core.step(queue.removeFirst()) {
                    switch a {
                    case .send(let m): sent.append(m)
                    case .persist(let t, _): queue.append(.persistDone(t))
                    case .grant(let id, _): granted.insert(id)
                    default: break
                    }
                }
            }
        }

        /// Pull ids sent for a location, in order.
        func pulls(of l: Location) -> [UInt64] {
            sent.compactMap { if case .pull(let p) = $0, p.locations.contains(l) { return p.id } else { return nil } }
        }

        /// Mark ids answered (granted or refused), in order.
        var markReplies: [UInt64] { sent.compactMap { if case .markReply(let r) = $0 { return r.id } else { return nil } } }
    }

    func testAReadThatLostOneAnswerToAGrantGetsTheNextOne() {
        let b = Node(moos: L)
        let read = OperationID(1)
        b.feed(.operationRequested(OperationRequest(id: read, items: [AccessItem(L, .read)])))
        XCTAssertEqual(b.pulls(of: L).count, 1, "MOOS: the read pulls")

        // The peer's mark crosses our pull: granting it makes the coming answer worthless (it may predate the token).
        b.feed(.received(.mark(Mark(id: 101, items: [MarkItem(location: L, needData: false, predicted: false)],
                                     clock: peerClock))))
        XCTAssertEqual(b.markReplies, [101], "the first mark is granted at once: writers keep their speed")
        b.feed(.received(.pullAnswer(PullAnswer(location: L, content: .inSync, prefetched: false, clock: peerClock,
                                                pullID: b.pulls(of: L)[0]))))
        XCTAssertFalse(b.granted.contains(read), "an answer from before the peer held the token does not serve the read")
        XCTAssertEqual(b.pulls(of: L).count, 2, "the read pulls again")

        // The peer wants L again before answering: this time the read comes first.
        b.feed(.received(.mark(Mark(id: 102, items: [MarkItem(location: L, needData: false, predicted: false)],
                                     clock: peerClock))))
        XCTAssertEqual(b.markReplies, [101], "the second mark waits for the starved read")
        b.feed(.received(.pullAnswer(PullAnswer(location: L, content: .inSync, prefetched: false, clock: peerClock,
                                                pullID: b.pulls(of: L)[1]))))
        XCTAssertTrue(b.granted.contains(read), "the second answer serves the read")
        XCTAssertEqual(b.core.state(of: L).token, .none)

        b.feed(.operationFinished(read, unwritten: []))
        XCTAssertEqual(b.markReplies, [101, 102], "the read done, the waiting mark is granted")
        XCTAssertEqual(b.core.state(of: L).token, .moos)
        XCTAssertEqual(b.core.checkInvariants(), [])
    }

    func testAReadThatNeverLostAnAnswerDoesNotHoldMarksBack() {
        let b = Node(moos: L)
        let read = OperationID(1)
        b.feed(.operationRequested(OperationRequest(id: read, items: [AccessItem(L, .read)])))
        b.feed(.received(.mark(Mark(id: 101, items: [MarkItem(location: L, needData: false, predicted: false)],
                                     clock: peerClock))))
        XCTAssertEqual(b.markReplies, [101])
        XCTAssertFalse(b.granted.contains(read))
    }
}
