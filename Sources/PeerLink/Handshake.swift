// PeerLink — the handshake's values: link hello, refusals, the HMAC proofs and the session keys.
// Owns: what each side proves and how keys are derived from the shared secret and both nonces.
// Must never: let a proof computed by one side verify as the other's (the prover's identity comes first, with a
// direction label), or reuse a session key across connections (both fresh nonces go into it).
import Crypto
import Foundation
import MirrorCore

/// Who this node is on the link, and the secret it proves knowledge of.
public struct LinkIdentity: Sendable {
    public var volumeID: String
    public var node: NodeID
    /// For logs only (at most 64 UTF-8 bytes).
    public var nodeName: String
    /// If set, a peer with another node id is refused.
    public var expectedPeer: NodeID?
    /// The bytes of the secret file, exactly (at least `minSecretBytes`).
    public var secret: [UInt8]

    public static let minSecretBytes = 16
    public static let maxVolumeIDBytes = 128
    public static let maxNodeNameBytes = 64

    public init(volumeID: String, node: NodeID, nodeName: String, expectedPeer: NodeID? = nil, secret: [UInt8]) {
        self.volumeID = volumeID; self.node = node; self.nodeName = nodeName; self.expectedPeer = expectedPeer
        self.secret = secret
    }

    /// Problems that make this identity unusable (empty when fine).
    public func problems() -> [String] {
        var p: [String] = []
        if secret.count < Self.minSecretBytes { p.append("the secret is \(secret.count) bytes; at least \(Self.minSecretBytes) are needed") }
        if volumeID.utf8.count == 0 || volumeID.utf8.count > Self.maxVolumeIDBytes { p.append("volume id must be 1-\(Self.maxVolumeIDBytes) bytes") }
        if nodeName.utf8.count > Self.maxNodeNameBytes { p.append("node name longer than \(Self.maxNodeNameBytes) bytes") }
        if expectedPeer == node { p.append("expected peer has this node's own id \(node)") }
        return p
    }
}

/// What a node says about operator promotions (Docs/OPERATIONS.md "Losing a node"): how often it was promoted,
/// and the peer's count when the two last agreed. Both sides judge the pair from the two claims before any
/// mirror message moves (`PromotionRule` in TwinNode); covered by the handshake proofs.
public struct PromotionClaim: Hashable, Sendable {
    public var promotion: UInt64
    public var peerPromotionSeen: UInt64
    /// Promoted and serving every location alone (not yet reconnected to a peer that gave way).
    public var sole: Bool
    public init(promotion: UInt64, peerPromotionSeen: UInt64, sole: Bool = false) {
        self.promotion = promotion; self.peerPromotionSeen = peerPromotionSeen; self.sole = sole
    }
    public static let none = PromotionClaim(promotion: 0, peerPromotionSeen: 0)
}

/// The first frame on a connection, both directions, before anything is trusted.
public struct LinkHello: Hashable, Sendable {
    public static let magic: UInt32 = 0x5457_4C4B   // "TWLK"
    public static let nonceBytes = 32
    public var minVersion: UInt16
    public var maxVersion: UInt16
    public var volumeID: String
    public var node: NodeID
    public var nodeName: String
    public var nonce: [UInt8]
    /// The sender's next connection epoch; the connection's epoch is the larger of the two proposals.
    public var epochProposal: UInt64
    public var promotion: PromotionClaim

    public init(minVersion: UInt16, maxVersion: UInt16, volumeID: String, node: NodeID, nodeName: String, nonce: [UInt8],
                epochProposal: UInt64, promotion: PromotionClaim = .none) {
        self.minVersion = minVersion; self.maxVersion = maxVersion; self.volumeID = volumeID; self.node = node
        self.nodeName = nodeName; self.nonce = nonce; self.epochProposal = epochProposal; self.promotion = promotion
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 112)
        w.u32(Self.magic); w.u16(minVersion); w.u16(maxVersion); w.string(volumeID); w.u8(node.raw)
        w.string(nodeName); w.raw(nonce); w.u64(epochProposal)
        w.u64(promotion.promotion); w.u64(promotion.peerPromotionSeen); w.u8(promotion.sole ? 1 : 0)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> LinkHello {
        var r = ByteReader(bytes)
        let m = try r.u32("hello.magic")
        if m != magic { throw .badMagic(m) }
        let h = LinkHello(minVersion: try r.u16("hello.minVersion"), maxVersion: try r.u16("hello.maxVersion"),
                          volumeID: try r.string("hello.volumeID", maxBytes: LinkIdentity.maxVolumeIDBytes),
                          node: NodeID(try r.u8("hello.node")),
                          nodeName: try r.string("hello.nodeName", maxBytes: LinkIdentity.maxNodeNameBytes),
                          nonce: try r.raw(nonceBytes, "hello.nonce"), epochProposal: try r.u64("hello.epoch"),
                          promotion: PromotionClaim(promotion: try r.u64("hello.promotion"),
                                                    peerPromotionSeen: try r.u64("hello.peerPromotionSeen"),
                                                    sole: try r.u8("hello.sole") != 0))
        try r.expectEnd()
        return h
    }
}

/// A refusal or goodbye: a code the program can test and one line for the log.
public struct Refusal: Hashable, Sendable, CustomStringConvertible {
    public enum Code: UInt8, Sendable {
        case authenticationFailed = 1, volumeMismatch = 2, duplicateNodeID = 3, unexpectedNode = 4
        case unsupportedVersion = 5, badHandshake = 6, duplicateConnection = 7, goingAway = 8
        case protocolError = 9, timeout = 10, busy = 11
        /// Codes from a newer peer are kept as this, with their reason text.
        case other = 255
    }
    public var code: Code
    public var reason: String
    public static let maxReasonBytes = 400

    public init(_ code: Code, _ reason: String) { self.code = code; self.reason = reason }
    public var description: String { reason }

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 16 + reason.utf8.count)
        w.u8(code.rawValue)
        w.string(String(decoding: Array(reason.utf8.prefix(Self.maxReasonBytes)), as: UTF8.self))
        return w.bytes
    }

    static func decode(_ bytes: [UInt8], to end: Int? = nil) throws(DecodeError) -> Refusal {
        var r = ByteReader(bytes, to: end)
        let c = Code(rawValue: try r.u8("refuse.code")) ?? .other
        // The text comes from the peer: keep it printable so it cannot forge log lines.
        let s = try r.string("refuse.reason", maxBytes: maxReasonBytes)
        try r.expectEnd()
        return Refusal(c, String(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) }))
    }
}

/// The HMAC computations of one handshake, from the shared secret and both hellos.
struct HandshakeCrypto {
    let key: SymmetricKey
    let version: UInt16
    let mine: LinkHello
    let peer: LinkHello

    init(secret: [UInt8], version: UInt16, mine: LinkHello, peer: LinkHello) {
        key = SymmetricKey(data: secret); self.version = version; self.mine = mine; self.peer = peer
    }

    /// What `prover` sends to convince `verifier` it knows the secret. The label names the direction, and the
    /// prover's id and nonce come first, so a proof reflected back never matches the one expected from the peer.
    static func proof(key: SymmetricKey, version: UInt16, prover: LinkHello, verifier: LinkHello) -> [UInt8] {
        var w = ByteWriter(capacity: 160)
        w.string("twinfs-link proof: prover to verifier"); w.u16(version); w.string(prover.volumeID)
        w.u8(prover.node.raw); w.string(prover.nodeName); w.raw(prover.nonce); w.u64(prover.epochProposal)
        w.u64(prover.promotion.promotion); w.u64(prover.promotion.peerPromotionSeen); w.u8(prover.promotion.sole ? 1 : 0)
        w.u8(verifier.node.raw); w.string(verifier.nodeName); w.raw(verifier.nonce); w.u64(verifier.epochProposal)
        w.u64(verifier.promotion.promotion); w.u64(verifier.promotion.peerPromotionSeen); w.u8(verifier.promotion.sole ? 1 : 0)
        return Array(HMAC<SHA256>.authenticationCode(for: w.bytes, using: key))
    }

    var myProof: [UInt8] { Self.proof(key: key, version: version, prover: mine, verifier: peer) }

    func verifyPeerProof(_ p: [UInt8]) -> Bool {
        let expected = Self.proof(key: key, version: version, prover: peer, verifier: mine)
        guard p.count == expected.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<p.count { diff |= p[i] ^ expected[i] }
        return diff == 0
    }

    /// Key for frames sent by `sender`: HKDF over the secret, salted with both nonces (lower node id first).
    func sessionKey(sender: NodeID) -> SymmetricKey {
        let (a, b) = mine.node < peer.node ? (mine, peer) : (peer, mine)
        var info = ByteWriter(capacity: 64)
        info.string("twinfs-link frames v\(version) from"); info.u8(sender.raw); info.string(mine.volumeID)
        return HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: a.nonce + b.nonce, info: info.bytes, outputByteCount: 32)
    }
}
