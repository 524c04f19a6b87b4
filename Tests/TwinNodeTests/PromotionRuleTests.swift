// The verdict two nodes reach from their promotion claims (TwinNode/Mirror/Promotion.swift): both sides judge the
// same pair of claims, so every case is checked from both ends.
import XCTest

@testable import TwinNode

final class PromotionRuleTests: XCTestCase {
    func view(_ promotion: UInt64, seen: UInt64, sole: Bool = false) -> PromotionView {
        PromotionView(promotion: promotion, peerPromotionSeen: seen, sole: sole)
    }

    func testNodesThatNeverWerePromotedMirrorAsUsual() {
        XCTAssertEqual(PromotionRule.verdict(mine: view(0, seen: 0), peer: view(0, seen: 0)), .proceed)
        XCTAssertEqual(PromotionRule.verdict(mine: view(2, seen: 1), peer: view(1, seen: 2)), .proceed)
    }

    func testThePeerPromotedWhileThisNodeWasAwayMakesThisNodeGiveWayAndThePeerWait() {
        let survivor = view(1, seen: 0, sole: true)
        let returning = view(0, seen: 0)
        XCTAssertEqual(PromotionRule.verdict(mine: returning, peer: survivor), .demote(peerPromotion: 1))
        XCTAssertEqual(PromotionRule.verdict(mine: survivor, peer: returning), .awaitPeerDemotion)
        // After giving way the returning node has seen the promotion: both go ahead.
        let gaveWay = view(0, seen: 1)
        XCTAssertEqual(PromotionRule.verdict(mine: gaveWay, peer: survivor), .proceed)
        XCTAssertEqual(PromotionRule.verdict(mine: survivor, peer: gaveWay), .proceed)
    }

    func testABrandNewStoreGivesWayToAPromotedSurvivor() {
        let fresh = view(0, seen: 0)
        let survivor = view(3, seen: 2, sole: true)
        XCTAssertEqual(PromotionRule.verdict(mine: fresh, peer: survivor), .demote(peerPromotion: 3))
        XCTAssertEqual(PromotionRule.verdict(mine: survivor, peer: fresh), .awaitPeerDemotion)
    }

    func testBothPromotedWhileApartIsASplitBrainOnBothSides() {
        let a = view(1, seen: 0, sole: true)
        let b = view(1, seen: 0, sole: true)
        XCTAssertEqual(PromotionRule.verdict(mine: a, peer: b), .splitBrain)
        XCTAssertEqual(PromotionRule.verdict(mine: b, peer: a), .splitBrain)
    }

    func testResolveOnEitherStoreMakesTheOtherGiveWay() {
        // Keep A, run on A: A counts B's promotion as seen.
        let keptA = view(1, seen: 1, sole: true)
        let b = view(1, seen: 0, sole: true)
        XCTAssertEqual(PromotionRule.verdict(mine: keptA, peer: b), .awaitPeerDemotion)
        XCTAssertEqual(PromotionRule.verdict(mine: b, peer: keptA), .demote(peerPromotion: 1))
        // Keep A, run on B: B takes its promotion back to what A had seen of it.
        let a = view(1, seen: 0, sole: true)
        let yieldingB = view(0, seen: 0, sole: false)
        XCTAssertEqual(PromotionRule.verdict(mine: yieldingB, peer: a), .demote(peerPromotion: 1))
        XCTAssertEqual(PromotionRule.verdict(mine: a, peer: yieldingB), .awaitPeerDemotion)
    }

    func testTwoNodesServingAloneNeverMirrorEvenIfTheCountsAgree() {
        // `resolve --keep` run on both stores, each keeping itself: the counts say "proceed", the sole flags not.
        let a = view(1, seen: 1, sole: true)
        let b = view(1, seen: 1, sole: true)
        XCTAssertEqual(PromotionRule.verdict(mine: a, peer: b), .splitBrain)
        XCTAssertEqual(PromotionRule.verdict(mine: b, peer: a), .splitBrain)
    }
}
