// The store's promotion counters (TwinStore/MirrorState.swift): what `twinfs promote`, a demotion, a refused split
// brain and `twinfs resolve` record, and that it survives reopening the store.
import Foundation
import XCTest

@testable import TwinStore

final class PromotionRecordTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinpromo-\(UUID().uuidString)").path
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func open() throws -> Store {
        if !FileManager.default.fileExists(atPath: dir) {
            _ = try Store.create(at: dir, nodeName: "alpha", trackBytes: 65536)
        }
        return try Store.open(at: dir)
    }

    func testAFreshStoreWasNeverPromoted() throws {
        let s = try open()
        defer { try? s.close() }
        XCTAssertEqual(try s.promotionRecord(), Store.PromotionRecord(promotion: 0, peerPromotionSeen: 0, sole: false, adopting: false, splitBrainPeer: nil))
    }

    func testAPromotionIsCountedMakesTheNodeSoleAndSurvivesAReopen() throws {
        do {
            let first = try open()
            XCTAssertEqual(try first.recordPromotion().promotion, 1)
            try first.close()
        }
        let s = try open()
        defer { try? s.close() }
        let r = try s.promotionRecord()
        XCTAssertEqual(r.promotion, 1)
        XCTAssertTrue(r.sole)
        XCTAssertEqual(try s.recordPromotion().promotion, 2, "each promotion counts")
    }

    func testADemotionForgetsTheMirrorStateRejoinsAdoptingAndRecordsThePeersPromotion() throws {
        let s = try open()
        defer { try? s.close() }
        try s.database.transaction {
            try s.writeMirrorState([Store.MirrorStateRow(ino: 5, slot: 0, state: 2), Store.MirrorStateRow(ino: 6, slot: 1, state: 3)],
                                   clockReservation: 1 << 16, joinCompleted: true)
        }
        XCTAssertEqual(try s.loadMirrorState().rows.count, 2)
        try s.recordDemotion(peerPromotion: 4)
        let saved = try s.loadMirrorState()
        XCTAssertEqual(saved.rows, [], "nothing of this node's bits is trusted any more")
        XCTAssertTrue(saved.joining)
        XCTAssertEqual(saved.clockReservation, 1 << 16, "versions are never reused")
        let r = try s.promotionRecord()
        XCTAssertEqual(r.peerPromotionSeen, 4)
        XCTAssertTrue(r.adopting)
        XCTAssertFalse(r.sole)
        // The join's end ends the adoption with it.
        try s.database.transaction { try s.writeMirrorState([], clockReservation: nil, joinCompleted: true) }
        XCTAssertFalse(try s.promotionRecord().adopting)
        XCTAssertFalse(try s.loadMirrorState().joining)
    }

    func testSoleEndsWithTheBatchThatSaysSo() throws {
        let s = try open()
        defer { try? s.close() }
        _ = try s.recordPromotion()
        try s.database.transaction { try s.writeMirrorState([], clockReservation: nil, sole: false) }
        XCTAssertFalse(try s.promotionRecord().sole)
        XCTAssertEqual(try s.promotionRecord().promotion, 1, "the count stays")
    }

    func testResolveNeedsARecordedSplitBrainAndThenMakesOneSideGiveWay() throws {
        let s = try open()
        defer { try? s.close() }
        XCTAssertThrowsError(try s.resolveSplitBrain(keepThisNode: true)) { error in
            XCTAssertTrue("\(error)".contains("no split brain"), "\(error)")
        }
        _ = try s.recordPromotion()
        try s.recordSplitBrain(peer: Store.SplitBrainClaim(promotion: 3, peerPromotionSeen: 0))
        XCTAssertEqual(try s.promotionRecord().splitBrainPeer, Store.SplitBrainClaim(promotion: 3, peerPromotionSeen: 0))
        // Keeping this node: the peer's promotion counts as seen, so the peer is the one that gives way.
        try s.resolveSplitBrain(keepThisNode: true)
        var r = try s.promotionRecord()
        XCTAssertEqual(r.peerPromotionSeen, 3)
        XCTAssertNil(r.splitBrainPeer)
        XCTAssertTrue(r.sole)
        // Keeping the peer: this node's promotion goes back to what the peer had seen of it, and it stops being sole.
        try s.recordSplitBrain(peer: Store.SplitBrainClaim(promotion: 5, peerPromotionSeen: 0))
        try s.resolveSplitBrain(keepThisNode: false)
        r = try s.promotionRecord()
        XCTAssertEqual(r.promotion, 0)
        XCTAssertFalse(r.sole)
        XCTAssertNil(r.splitBrainPeer)
    }
}
