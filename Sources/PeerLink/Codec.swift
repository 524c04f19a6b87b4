// PeerLink — the binary encoding of every MirrorCore `Message` (wire version 1) and the frame type table.
// Owns: field order and widths of each message, the frame type numbers, splitting a too-large mark reply.
// Must never: change an existing encoding without bumping `WireVersion.current`; accept a value it did not define.
import MirrorCore

/// Protocol versions of the link. Negotiated in the handshake: both sides use the highest version both support.
public enum WireVersion {
    public static let current: UInt16 = 1
    public static let oldestSupported: UInt16 = 1
}

/// The byte after the length field. Link control frames are below 0x10, MirrorCore messages from 0x10.
public enum FrameType: UInt8, CaseIterable, Sendable {
    // Handshake (before authentication; never carry protocol data).
    case linkHello = 0x01
    case proof = 0x02
    /// First sealed frame in each direction: proves the session key, ends the handshake.
    case ready = 0x03
    /// A refusal or goodbye with a reason; sealed once the session is open.
    case refuse = 0x04
    case ping = 0x05
    case pong = 0x06
    /// `twinfs verify` between the daemons (VerifyFrames.swift); sealed, never seen by the protocol core.
    case verifyRequest = 0x07
    case verifyAnswer = 0x08
    // MirrorCore messages.
    case hello = 0x10
    case mark = 0x11
    case markReply = 0x12
    case pull = 0x13
    case pullAnswer = 0x14
    case ack = 0x15
    case push = 0x16
    case release = 0x17

    public var isMessage: Bool { rawValue >= 0x10 }
}

/// Encodes and decodes MirrorCore messages as frame payloads (the bytes after the frame type).
public enum MessageCodec {
    /// Largest payload (one track of data) a message may carry: the store's largest track size.
    public static let maxPayloadDataBytes = 1 << 20
    static let locationBytes = 16
    static let versionBytes = 9

    public static func frameType(of m: Message) -> FrameType {
        switch m {
        case .hello: return .hello
        case .mark: return .mark
        case .markReply: return .markReply
        case .pull: return .pull
        case .pullAnswer: return .pullAnswer
        case .ack: return .ack
        case .push: return .push
        case .release: return .release
        }
    }

    /// Upper bound of the encoded payload size, without encoding (used to split and to pre-size buffers).
    public static func payloadSizeBound(_ m: Message) -> Int {
        switch m {
        case .hello: return 25
        case let .mark(x): return 20 + x.items.count * 17
        case let .markReply(x):
            return 24 + x.refused.count * locationBytes
                + x.granted.reduce(0) { $0 + locationBytes + 1 + versionBytes + 4 + ($1.data?.bytes.count ?? 0) }
        case let .pull(x): return 13 + x.locations.count * locationBytes
        case let .pullAnswer(x):
            if case let .data(p, _) = x.content { return 34 + versionBytes + 4 + p.bytes.count }
            return 34
        case .ack: return locationBytes + versionBytes + 1
        case let .push(x): return locationBytes + versionBytes + 1 + 4 + x.payload.bytes.count
        case let .release(x): return 4 + x.locations.count * locationBytes
        }
    }

    public static func encode(_ m: Message) -> (FrameType, [UInt8]) {
        var w = ByteWriter(capacity: payloadSizeBound(m))
        encode(m, into: &w)
        return (frameType(of: m), w.bytes)
    }

    public static func encode(_ m: Message, into w: inout ByteWriter) {
        switch m {
        case let .hello(h):
            w.u8(h.node.raw); w.u64(h.epoch); w.u64(h.incarnation); w.u64(h.clock)
        case let .mark(x):
            w.u64(x.id); w.u64(x.clock); w.u32(UInt32(x.items.count))
            for i in x.items {
                location(i.location, &w)
                w.u8((i.needData ? 1 : 0) | (i.predicted ? 2 : 0) | (i.forceData ? 4 : 0))
            }
        case let .markReply(x):
            w.u64(x.id); w.u64(x.clock); w.u32(UInt32(x.granted.count))
            for g in x.granted {
                location(g.location, &w)
                w.u8((g.data != nil ? 1 : 0) | (g.version != nil ? 2 : 0))
                if let v = g.version { version(v, &w) }
                if let d = g.data { w.blob(d.bytes) }
            }
            w.u32(UInt32(x.refused.count))
            for l in x.refused { location(l, &w) }
        case let .pull(x):
            w.u64(x.id); w.bool(x.forceData); w.u32(UInt32(x.locations.count))
            for l in x.locations { location(l, &w) }
        case let .pullAnswer(x):
            location(x.location, &w); w.u64(x.clock); w.u64(x.pullID); w.bool(x.prefetched)
            switch x.content {
            case .inSync: w.u8(0)
            case let .data(p, v): w.u8(1); version(v, &w); w.blob(p.bytes)
            }
        case let .ack(r):
            location(r.location, &w); version(r.version, &w); w.bool(r.durable)
        case let .push(x):
            location(x.location, &w); version(x.version, &w); w.bool(x.durable); w.blob(x.payload.bytes)
        case let .release(x):
            w.u32(UInt32(x.locations.count))
            for l in x.locations { location(l, &w) }
        }
    }

    /// Decodes one message payload; the whole payload must be consumed.
    public static func decode(_ type: FrameType, _ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) throws(DecodeError) -> Message {
        var r = ByteReader(bytes, from: start, to: end)
        let m: Message
        switch type {
        case .hello:
            m = .hello(Hello(node: NodeID(try r.u8("hello.node")), epoch: try r.u64("hello.epoch"),
                             incarnation: try r.u64("hello.incarnation"), clock: try r.u64("hello.clock")))
        case .mark:
            let id = try r.u64("mark.id"), clock = try r.u64("mark.clock")
            let n = try r.count("mark.items", minElementBytes: locationBytes + 1)
            var items: [MarkItem] = []; items.reserveCapacity(n)
            for _ in 0..<n {
                let l = try location(&r)
                let f = try r.u8("mark.item.flags")
                if f & ~7 != 0 { throw .badTag(field: "mark.item.flags", value: f) }
                items.append(MarkItem(location: l, needData: f & 1 != 0, predicted: f & 2 != 0, forceData: f & 4 != 0))
            }
            m = .mark(Mark(id: id, items: items, clock: clock))
        case .markReply:
            let id = try r.u64("markReply.id"), clock = try r.u64("markReply.clock")
            let n = try r.count("markReply.granted", minElementBytes: locationBytes + 1)
            var granted: [MarkGrant] = []; granted.reserveCapacity(n)
            for _ in 0..<n {
                let l = try location(&r)
                let f = try r.u8("markReply.grant.flags")
                if f & ~3 != 0 { throw .badTag(field: "markReply.grant.flags", value: f) }
                let v = f & 2 != 0 ? try version(&r) : nil
                let d = f & 1 != 0 ? Payload(try r.blob("markReply.grant.data", maxBytes: maxPayloadDataBytes)) : nil
                granted.append(MarkGrant(location: l, data: d, version: v))
            }
            let k = try r.count("markReply.refused", minElementBytes: locationBytes)
            var refused: [Location] = []; refused.reserveCapacity(k)
            for _ in 0..<k { refused.append(try location(&r)) }
            m = .markReply(MarkReply(id: id, granted: granted, refused: refused, clock: clock))
        case .pull:
            let id = try r.u64("pull.id"), force = try r.bool("pull.forceData")
            m = .pull(Pull(locations: try locations(&r, "pull.locations"), id: id, forceData: force))
        case .pullAnswer:
            let l = try location(&r)
            let clock = try r.u64("pullAnswer.clock"), pullID = try r.u64("pullAnswer.pullID")
            let prefetched = try r.bool("pullAnswer.prefetched")
            let content: PullContent
            switch try r.u8("pullAnswer.content") {
            case 0: content = .inSync
            case 1:
                let v = try version(&r)
                content = .data(Payload(try r.blob("pullAnswer.data", maxBytes: maxPayloadDataBytes)), v)
            case let t: throw .badTag(field: "pullAnswer.content", value: t)
            }
            m = .pullAnswer(PullAnswer(location: l, content: content, prefetched: prefetched, clock: clock, pullID: pullID))
        case .ack:
            m = .ack(Receipt(location: try location(&r), version: try version(&r), durable: try r.bool("ack.durable")))
        case .push:
            let l = try location(&r), v = try version(&r), durable = try r.bool("push.durable")
            m = .push(Push(location: l, payload: Payload(try r.blob("push.data", maxBytes: maxPayloadDataBytes)), version: v, durable: durable))
        case .release:
            m = .release(Release(locations: try locations(&r, "release.locations")))
        case .linkHello, .proof, .ready, .refuse, .ping, .pong, .verifyRequest, .verifyAnswer:
            throw .unexpectedFrameType(type.rawValue, phase: "as a protocol message")
        }
        try r.expectEnd()
        return m
    }

    /// Splits a message whose payload would exceed `maxPayloadBytes` into several that each fit, where the protocol
    /// allows it: a mark reply may come in several parts with the same id (Docs/PROTOCOL.md, "Messages").
    /// Returns nil if the message cannot be made to fit (a single grant or datum larger than the limit).
    public static func split(_ m: Message, maxPayloadBytes: Int) -> [Message]? {
        if payloadSizeBound(m) <= maxPayloadBytes { return [m] }
        guard case let .markReply(x) = m else { return nil }
        var parts: [MarkReply] = []
        var cur = MarkReply(id: x.id, granted: [], refused: [], clock: x.clock)
        var curBytes = 24
        func flush() { parts.append(cur); cur = MarkReply(id: x.id, granted: [], refused: [], clock: x.clock); curBytes = 24 }
        for g in x.granted {
            let b = payloadSizeBound(.markReply(MarkReply(id: 0, granted: [g], refused: [], clock: 0))) - 24
            if 24 + b > maxPayloadBytes { return nil }
            if curBytes + b > maxPayloadBytes { flush() }
            cur.granted.append(g); curBytes += b
        }
        for l in x.refused {
            if curBytes + locationBytes > maxPayloadBytes { flush() }
            cur.refused.append(l); curBytes += locationBytes
        }
        if !cur.granted.isEmpty || !cur.refused.isEmpty || parts.isEmpty { parts.append(cur) }
        return parts.map { .markReply($0) }
    }

    @inline(__always) static func location(_ l: Location, _ w: inout ByteWriter) { w.u64(l.ino); w.u64(l.slot) }
    @inline(__always) static func version(_ v: Version, _ w: inout ByteWriter) { w.u64(v.counter); w.u8(v.node.raw) }
    @inline(__always) static func location(_ r: inout ByteReader) throws(DecodeError) -> Location {
        Location(ino: try r.u64("location.ino"), slot: try r.u64("location.slot"))
    }
    @inline(__always) static func version(_ r: inout ByteReader) throws(DecodeError) -> Version {
        Version(counter: try r.u64("version.counter"), node: NodeID(try r.u8("version.node")))
    }
    static func locations(_ r: inout ByteReader, _ field: String) throws(DecodeError) -> [Location] {
        let n = try r.count(field, minElementBytes: locationBytes)
        var out: [Location] = []; out.reserveCapacity(n)
        for _ in 0..<n { out.append(try location(&r)) }
        return out
    }
}
