// PeerLink — the link-level messages of `twinfs verify` (frame types `verifyRequest` and `verifyAnswer`, sealed
// like every frame after the handshake): one node asks for the version and checksum of the peer's copy of some
// locations, and in a repair for the peer's image of one, or gives the peer its own. The protocol core never sees
// them (they change no bitmap and no token).
// Owns: their encoding (wire version 1; the first payload byte tells the kind). Never: interpret them (the
// daemon's verifier does), or accept a count or length it did not bound.
import MirrorCore

/// A location's state on the answering node.
public struct VerifyEntry: Equatable, Sendable {
    public var location: Location
    /// The store version (`counter << 16 | node`); 0: never written.
    public var version: UInt64
    /// Checksum of the current bytes (`Store.checksumBytes`); empty when they could not be read.
    public var sum: [UInt8]
    public var flags: Flags

    public struct Flags: OptionSet, Equatable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The core may still copy the location (out of sync, maybe out of sync, or not compared yet).
        public static let unsettled = Flags(rawValue: 1)
        /// The bytes could not be read.
        public static let unreadable = Flags(rawValue: 2)
        /// A checksum is recorded for the current version.
        public static let recorded = Flags(rawValue: 4)
        /// ...and the current bytes do not match it: this copy is corrupt.
        public static let mismatchesRecorded = Flags(rawValue: 8)
        public static let all: Flags = [.unsettled, .unreadable, .recorded, .mismatchesRecorded]
    }

    public init(location: Location, version: UInt64, sum: [UInt8], flags: Flags) {
        self.location = location; self.version = version; self.sum = sum; self.flags = flags
    }
}

public enum VerifyMessage: Equatable, Sendable {
    // Requests (frame type `verifyRequest`).
    /// What are the versions and checksums of these locations?
    case check(id: UInt64, locations: [Location])
    /// Send your image of this location.
    case fetch(id: UInt64, location: Location)
    /// Store this image: at the same version as yours (`sameVersion`, a repair of a corrupt copy), or if it is newer.
    case store(id: UInt64, location: Location, version: UInt64, sameVersion: Bool, bytes: [UInt8])
    // Answers (frame type `verifyAnswer`).
    case checked(id: UInt64, entries: [VerifyEntry])
    /// The image of a fetch; nil bytes: it could not be read.
    case image(id: UInt64, location: Location, version: UInt64, bytes: [UInt8]?)
    /// The outcome of a store: applied, or why not.
    case stored(id: UInt64, applied: Bool, detail: String)

    public var id: UInt64 {
        switch self {
        case let .check(id, _), let .fetch(id, _), let .store(id, _, _, _, _), let .checked(id, _), let .image(id, _, _, _),
             let .stored(id, _, _):
            return id
        }
    }

    public var isRequest: Bool {
        switch self {
        case .check, .fetch, .store: return true
        case .checked, .image, .stored: return false
        }
    }
}

public enum VerifyCodec {
    /// Most locations one check may name (the verifier asks in batches well below this).
    public static let maxLocations = 4096
    public static let maxSumBytes = 64
    public static let maxDetailBytes = 1024
    static let locationBytes = 16

    public static func frameType(of m: VerifyMessage) -> FrameType { m.isRequest ? .verifyRequest : .verifyAnswer }

    public static func encode(_ m: VerifyMessage) -> (FrameType, [UInt8]) {
        var w = ByteWriter()
        switch m {
        case let .check(id, locations):
            w.u8(1); w.u64(id); w.u32(UInt32(locations.count))
            for l in locations { MessageCodec.location(l, &w) }
        case let .fetch(id, location):
            w.u8(2); w.u64(id); MessageCodec.location(location, &w)
        case let .store(id, location, version, sameVersion, bytes):
            w.u8(3); w.u64(id); MessageCodec.location(location, &w); w.u64(version); w.bool(sameVersion); w.blob(bytes)
        case let .checked(id, entries):
            w.u8(1); w.u64(id); w.u32(UInt32(entries.count))
            for e in entries {
                MessageCodec.location(e.location, &w); w.u64(e.version); w.u8(e.flags.rawValue)
                w.u8(UInt8(min(e.sum.count, maxSumBytes))); w.raw(Array(e.sum.prefix(maxSumBytes)))
            }
        case let .image(id, location, version, bytes):
            w.u8(2); w.u64(id); MessageCodec.location(location, &w); w.u64(version); w.bool(bytes != nil)
            if let bytes { w.blob(bytes) }
        case let .stored(id, applied, detail):
            w.u8(3); w.u64(id); w.bool(applied); w.string(boundedDetail(detail))
        }
        return (frameType(of: m), w.bytes)
    }

    /// At most `maxDetailBytes` of UTF-8, cut at a character boundary.
    static func boundedDetail(_ detail: String) -> String {
        var bytes = Array(detail.utf8.prefix(maxDetailBytes))
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Decodes one verify frame's payload; the whole payload must be consumed.
    public static func decode(_ type: FrameType, _ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) throws(DecodeError) -> VerifyMessage {
        var r = ByteReader(bytes, from: start, to: end)
        let m: VerifyMessage
        switch (type, try r.u8("verify.kind")) {
        case (.verifyRequest, 1):
            let id = try r.u64("verify.id")
            let n = try r.count("verify.check.locations", minElementBytes: locationBytes)
            if n > maxLocations { throw .badCount(field: "verify.check.locations", count: n, limit: maxLocations) }
            var locations: [Location] = []; locations.reserveCapacity(n)
            for _ in 0..<n { locations.append(try MessageCodec.location(&r)) }
            m = .check(id: id, locations: locations)
        case (.verifyRequest, 2):
            m = .fetch(id: try r.u64("verify.id"), location: try MessageCodec.location(&r))
        case (.verifyRequest, 3):
            let id = try r.u64("verify.id"), l = try MessageCodec.location(&r), v = try r.u64("verify.store.version")
            let same = try r.bool("verify.store.sameVersion")
            m = .store(id: id, location: l, version: v, sameVersion: same,
                       bytes: try r.blob("verify.store.bytes", maxBytes: MessageCodec.maxPayloadDataBytes))
        case (.verifyAnswer, 1):
            let id = try r.u64("verify.id")
            let n = try r.count("verify.checked.entries", minElementBytes: locationBytes + 10)
            if n > maxLocations { throw .badCount(field: "verify.checked.entries", count: n, limit: maxLocations) }
            var entries: [VerifyEntry] = []; entries.reserveCapacity(n)
            for _ in 0..<n {
                let l = try MessageCodec.location(&r), v = try r.u64("verify.entry.version")
                let f = try r.u8("verify.entry.flags")
                if f & ~VerifyEntry.Flags.all.rawValue != 0 { throw .badTag(field: "verify.entry.flags", value: f) }
                let k = Int(try r.u8("verify.entry.sumBytes"))
                if k > maxSumBytes { throw .badCount(field: "verify.entry.sumBytes", count: k, limit: maxSumBytes) }
                entries.append(VerifyEntry(location: l, version: v, sum: try r.raw(k, "verify.entry.sum"), flags: VerifyEntry.Flags(rawValue: f)))
            }
            m = .checked(id: id, entries: entries)
        case (.verifyAnswer, 2):
            let id = try r.u64("verify.id"), l = try MessageCodec.location(&r), v = try r.u64("verify.image.version")
            let has = try r.bool("verify.image.present")
            m = .image(id: id, location: l, version: v,
                       bytes: has ? try r.blob("verify.image.bytes", maxBytes: MessageCodec.maxPayloadDataBytes) : nil)
        case (.verifyAnswer, 3):
            let id = try r.u64("verify.id"), applied = try r.bool("verify.stored.applied")
            m = .stored(id: id, applied: applied, detail: try r.string("verify.stored.detail", maxBytes: maxDetailBytes))
        case (.verifyRequest, let k), (.verifyAnswer, let k):
            throw .badTag(field: "verify.kind", value: k)
        default:
            throw .unexpectedFrameType(type.rawValue, phase: "as a verify message")
        }
        try r.expectEnd()
        return m
    }
}
