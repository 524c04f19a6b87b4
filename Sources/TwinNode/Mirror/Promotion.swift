// Promotion: how two nodes judge each other's operator promotions when they meet (Docs/OPERATIONS.md "Losing a
// node", Docs/PROTOCOL.md section 13). A pure rule over the two authenticated claims, applied identically on both
// sides, so both reach the same verdict without another message.
// Owns: the verdict. Must never: touch the store or the link (the runtime acts on the verdict).

/// One side's claim: how often it was promoted, and the peer's count when they last agreed.
public struct PromotionView: Equatable, Sendable {
    public var promotion: UInt64
    public var peerPromotionSeen: UInt64
    /// Promoted and serving alone: its tokens are not backed by the peer's bits, so it may only meet a peer that
    /// gave way (demoted or fresh, reading everything as maybe-out-of-sync).
    public var sole: Bool
    public init(promotion: UInt64, peerPromotionSeen: UInt64, sole: Bool) {
        self.promotion = promotion; self.peerPromotionSeen = peerPromotionSeen; self.sole = sole
    }
}

public enum PromotionVerdict: Equatable, Sendable {
    /// Neither node was promoted behind the other's back: mirror as usual.
    case proceed
    /// The peer was promoted while this node was away: this node preserves what it had not replicated, forgets
    /// its mirror state, rejoins adopting the peer's copy, and connects again.
    case demote(peerPromotion: UInt64)
    /// This node was promoted while the peer was away: refuse until the peer has given way (it demotes and
    /// connects again with the promotion seen).
    case awaitPeerDemotion
    /// Both nodes were promoted since they last agreed: refuse; an operator settles it with `twinfs resolve`.
    case splitBrain
}

public enum PromotionRule {
    public static func verdict(mine: PromotionView, peer: PromotionView) -> PromotionVerdict {
        let peerPromotedUnseen = peer.promotion > mine.peerPromotionSeen
        let mePromotedUnseen = mine.promotion > peer.peerPromotionSeen
        switch (mePromotedUnseen, peerPromotedUnseen) {
        case (true, true): return .splitBrain
        case (false, true): return .demote(peerPromotion: peer.promotion)
        case (true, false): return .awaitPeerDemotion
        case (false, false):
            // Two nodes serving alone both hold every token: never mirror them against each other, whatever the
            // counts say (e.g. `resolve --keep` run on both stores, each keeping itself).
            return mine.sole && peer.sole ? .splitBrain : .proceed
        }
    }

    /// The operator's line for a split brain (both logs and `twinfs status` show it).
    public static func splitBrainMessage(peerName: String) -> String {
        "split brain: both this node and \(peerName) were promoted while apart; refusing to mirror. Decide which "
            + "node's data win and run `twinfs resolve STORE --keep NODE` on either store (the other side's changes "
            + "are kept under /.twinfs/conflicts)"
    }
}
