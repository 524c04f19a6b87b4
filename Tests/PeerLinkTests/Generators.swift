// PeerLinkTests — seeded generators of MirrorCore messages and helpers shared by the tests.
// Owns: test data only. Must never: depend on wall-clock randomness (every test names its seed).
import MirrorCore
@testable import PeerLink

/// SplitMix64: small, fast, seeded.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &self) } }
}

enum Gen {
    /// Values at the edges as often as in the middle: codecs break at 0, max and byte boundaries.
    static func u64(_ r: inout SeededRandom) -> UInt64 {
        switch Int.random(in: 0..<6, using: &r) {
        case 0: return 0
        case 1: return .max
        case 2: return UInt64.random(in: 0...255, using: &r)
        case 3: return UInt64(UInt32.max) &+ UInt64.random(in: 0...2, using: &r) &- 1
        default: return r.next()
        }
    }
    static func node(_ r: inout SeededRandom) -> NodeID { NodeID(UInt8.random(in: 0...255, using: &r)) }
    static func location(_ r: inout SeededRandom) -> Location { Location(ino: u64(&r), slot: u64(&r)) }
    static func version(_ r: inout SeededRandom) -> Version { Version(counter: u64(&r), node: node(&r)) }
    static func payload(_ r: inout SeededRandom, maxBytes: Int) -> Payload {
        let n = Bool.random(using: &r) ? Int.random(in: 0...16, using: &r) : Int.random(in: 0...maxBytes, using: &r)
        return Payload(r.bytes(n))
    }
    static func locations(_ r: inout SeededRandom, max: Int) -> [Location] {
        (0..<Int.random(in: 0...max, using: &r)).map { _ in location(&r) }
    }

    /// Every message case with each of its fields drawn; `kind` picks the case (0..<8), nil draws it.
    static func message(_ r: inout SeededRandom, kind: Int? = nil, maxItems: Int = 8, maxDataBytes: Int = 300) -> Message {
        switch kind ?? Int.random(in: 0..<messageKinds, using: &r) {
        case 0:
            return .hello(Hello(node: node(&r), epoch: u64(&r), incarnation: u64(&r), clock: u64(&r)))
        case 1:
            let items = (0..<Int.random(in: 0...maxItems, using: &r)).map { _ in
                MarkItem(location: location(&r), needData: .random(using: &r), predicted: .random(using: &r),
                         forceData: .random(using: &r))
            }
            return .mark(Mark(id: u64(&r), items: items, clock: u64(&r)))
        case 2:
            let granted = (0..<Int.random(in: 0...maxItems, using: &r)).map { _ in
                MarkGrant(location: location(&r), data: Bool.random(using: &r) ? payload(&r, maxBytes: maxDataBytes) : nil,
                          version: Bool.random(using: &r) ? version(&r) : nil)
            }
            return .markReply(MarkReply(id: u64(&r), granted: granted, refused: locations(&r, max: maxItems), clock: u64(&r)))
        case 3:
            return .pull(Pull(locations: locations(&r, max: maxItems), id: u64(&r), forceData: .random(using: &r)))
        case 4:
            let content: PullContent = Bool.random(using: &r) ? .inSync : .data(payload(&r, maxBytes: maxDataBytes), version(&r))
            return .pullAnswer(PullAnswer(location: location(&r), content: content, prefetched: .random(using: &r),
                                          clock: u64(&r), pullID: u64(&r)))
        case 5:
            return .ack(Receipt(location: location(&r), version: version(&r), durable: .random(using: &r)))
        case 6:
            return .push(Push(location: location(&r), payload: payload(&r, maxBytes: maxDataBytes), version: version(&r),
                              durable: .random(using: &r)))
        default:
            return .release(Release(locations: locations(&r, max: maxItems)))
        }
    }
    static let messageKinds = 8

    /// One of each case, non-trivial, for the end-to-end exchange.
    static func oneOfEach(seed: UInt64) -> [Message] {
        var r = SeededRandom(seed: seed)
        return (0..<messageKinds).map { message(&r, kind: $0, maxItems: 4, maxDataBytes: 64 * 1024) }
    }
}

func testIdentity(node: UInt8, volume: String = "vol-test-1", secret: String = "correct horse battery staple",
                  expectedPeer: UInt8? = nil) -> LinkIdentity {
    LinkIdentity(volumeID: volume, node: NodeID(node), nodeName: "node\(node)", expectedPeer: expectedPeer.map(NodeID.init),
                 secret: Array(secret.utf8))
}
