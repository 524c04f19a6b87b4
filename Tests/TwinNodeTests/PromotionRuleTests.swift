// The verdict two nodes reach from their promotion claims (TwinNode/Mirror/Promotion.swift): both sides judge the
// same pair of claims, so every case is checked from both ends.
import XCTest

@testable import TwinNode

final class PromotionRuleTests: XCTestCase {
    func view(_ promotion: UInt64, seen: UInt64, sole: Bool = false) -> PromotionView {
        PromotionView(promotion: promotion, peerPromotionSeen: seen, sole: sole)
    }

    /// What `a` decides about `b`, and `b` about `a`.
    func assertVerdicts(_ a: PromotionView, _ b: PromotionView, _ aDecides: PromotionVerdict, _ bDecides: PromotionVerdict,
                        file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(PromotionRule.verdict(mine: a, peer: b), aDecides, "as seen from the first", file: file, line: line)
        XCTAssertEqual(PromotionRule.verdict(mine: b, peer: a), bDecides, "as seen from the second", file: file, line: line)
    }

    func testNodesThatNeverWerePromotedMirrorAsUsual() {
        XCTAssertEqual(PromotionRule.verdict(mine: view(0, seen: 0), peer: view(0, seen: 0)), .proceed)
        XCTAssertEqual(PromotionRule.verdict(mine: view(2, seen: 1), peer: view(1, seen: 2)), .proceed)
    }

    func testThePeerPromotedWhileThisNodeWasAwayMakesThisNodeGiveWayAndThePeerWait() {
        let survivor = view(1, seen: 0, sole: true)
        let returning = view(0, seen: 0)
        assertVerdicts(returning, survivor, .demote(peerPromotion: 1), .awaitPeerDemotion)
        // After giving way the returning node has seen the promotion: both go ahead.
        let gaveWay = view(0, seen: 1)
        assertVerdicts(gaveWay, survivor, .proceed, .proceed)
    }

    func testABrandNewStoreGivesWayToAPromotedSurvivor() {
        let fresh = view(0, seen: 0)
        let survivor = view(3, seen: 2, sole: true)
        assertVerdicts(fresh, survivor, .demote(peerPromotion: 3), .awaitPeerDemotion)
    }

    func testBothPromotedWhileApartIsASplitBrainOnBothSides() {
        let a = view(1, seen: 0, sole: true)
        let b = view(1, seen: 0, sole: true)
        assertVerdicts(a, b, .splitBrain, .splitBrain)
    }

    func testResolveOnEitherStoreMakesTheOtherGiveWay() {
        // Keep A, run on A: A counts B's promotion as seen.
        let keptA = view(1, seen: 1, sole: true)
        let b = view(1, seen: 0, sole: true)
        assertVerdicts(keptA, b, .awaitPeerDemotion, .demote(peerPromotion: 1))
        // Keep A, run on B: B takes its promotion back to what A had seen of it.
        let a = view(1, seen: 0, sole: true)
        let yieldingB = view(0, seen: 0, sole: false)
        assertVerdicts(yieldingB, a, .demote(peerPromotion: 1), .awaitPeerDemotion)
    }

    func testTwoNodesServingAloneNeverMirrorEvenIfTheCountsAgree() {
        // `resolve --keep` run on both stores, each keeping itself: the counts say "proceed", the sole flags not.
        let a = view(1, seen: 1, sole: true)
        let b = view(1, seen: 1, sole: true)
        assertVerdicts(a, b, .splitBrain, .splitBrain)
    }
}
