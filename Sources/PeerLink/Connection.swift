// PeerLink — one connection as a pure state machine: bytes and time in, bytes to send and events out.
// Owns: the handshake order (hello, proof, ready), version/volume/node checks, sealed frames, heartbeats, timeouts.
// Must never: deliver a protocol message before both proofs verified and the peer's sealed `ready` arrived; do I/O,
// read a clock or draw randomness itself (the nonce and times are passed in).
import MirrorCore

public enum ConnectionRole: String, Sendable { case dialer, listener }

/// Timing limits of a connection (units last).
public struct ConnectionLimits: Sendable {
    public var maxFrameBytes: Int = FrameLimits.defaultMaxFrameBytes
    /// The whole handshake must finish within this.
    public var handshakeTimeoutMs: UInt64 = 5_000
    /// A ping is sent this long after the last one.
    public var heartbeatIntervalMs: UInt64 = 1_000
    /// The connection is closed when nothing at all arrived for this long.
    public var peerSilenceTimeoutMs: UInt64 = 5_000
    public init() {}
}

/// Why a connection ended. `description` is the one log line.
public enum CloseReason: Hashable, Sendable, CustomStringConvertible {
    /// This side refused the peer (and told it why).
    case refusedLocally(Refusal)
    /// The peer refused this side, or said goodbye, with its reason.
    case refusedByPeer(Refusal)
    case peerClosed
    case peerSilent(ms: UInt64)
    case ioError(String)
    /// Another connection to the same peer was kept (one connection per pair).
    case replaced
    case stopped

    public var description: String {
        switch self {
        case let .refusedLocally(r): return "refused the peer: \(r.reason)"
        case let .refusedByPeer(r): return "refused by the peer: \(r.reason)"
        case .peerClosed: return "the peer closed the connection"
        case let .peerSilent(ms): return "nothing received from the peer for \(ms) ms"
        case let .ioError(e): return "I/O error: \(e)"
        case .replaced: return "replaced by another connection to the same peer"
        case .stopped: return "link stopped"
        }
    }

    /// The refusal, if the connection ended in one (either side).
    public var refusal: Refusal? {
        switch self {
        case let .refusedLocally(r), let .refusedByPeer(r): return r
        default: return nil
        }
    }
}

/// What the handshake established.
public struct SessionInfo: Hashable, Sendable {
    public var version: UInt16
    public var epoch: UInt64
    public var role: ConnectionRole
    public var peerNode: NodeID
    public var peerName: String
    /// Which node dialed this connection (decides which of two simultaneous connections survives).
    public var dialer: NodeID
    /// What the peer claims about operator promotions (authenticated with the rest of its hello).
    public var peerPromotion: PromotionClaim = .none
}

public struct ConnectionMachine {
    public enum Output: Sendable {
        case send([UInt8])
        case established(SessionInfo)
        case deliver(Message)
        /// A `twinfs verify` message (link level: for the daemon, not the core).
        case deliverVerify(VerifyMessage)
        case rtt(microseconds: UInt64)
        /// The connection is over; any `.send` before this in the same batch goes out first.
        case close(CloseReason)
    }

    struct Handshaking {
        var peer: LinkHello?
        var crypto: HandshakeCrypto?
        var sealer: FrameSealer?
        var opener: FrameOpener?
        var sentReady = false
    }
    struct Open {
        var info: SessionInfo
        var sealer: FrameSealer
        var opener: FrameOpener
        var lastPingUs: UInt64
    }
    enum Phase {
        case idle
        case handshaking(Handshaking)
        case open(Open)
        case closed(CloseReason)
    }

    public let identity: LinkIdentity
    public let role: ConnectionRole
    public let limits: ConnectionLimits
    let hello: LinkHello
    var phase: Phase = .idle
    var assembler: FrameAssembler
    let startUs: UInt64
    var lastReceiveUs: UInt64
    public private(set) var framesReceived = 0
    public private(set) var framesSent = 0

    /// `nonce`: 32 fresh random bytes; `epochProposal`: this process's next epoch; `nowUs`: a monotonic clock.
    public init(identity: LinkIdentity, role: ConnectionRole, nonce: [UInt8], epochProposal: UInt64,
                promotion: PromotionClaim = .none, limits: ConnectionLimits = ConnectionLimits(), nowUs: UInt64,
                versions: ClosedRange<UInt16> = WireVersion.oldestSupported...WireVersion.current) {
        precondition(nonce.count == LinkHello.nonceBytes, "a nonce is \(LinkHello.nonceBytes) bytes")
        precondition(identity.problems().isEmpty, "unusable identity: \(identity.problems())")
        self.identity = identity; self.role = role; self.limits = limits
        hello = LinkHello(minVersion: versions.lowerBound, maxVersion: versions.upperBound, volumeID: identity.volumeID,
                          node: identity.node, nodeName: identity.nodeName, nonce: nonce, epochProposal: epochProposal,
                          promotion: promotion)
        assembler = FrameAssembler(maxFrameBytes: FrameLimits.handshakeMaxFrameBytes)
        startUs = nowUs; lastReceiveUs = nowUs
    }

    public var isOpen: Bool { if case .open = phase { return true }; return false }
    public var isClosed: Bool { if case .closed = phase { return true }; return false }
    public var session: SessionInfo? { if case let .open(o) = phase { return o.info }; return nil }
    public var closeReason: CloseReason? { if case let .closed(r) = phase { return r }; return nil }

    /// Sends this side's hello; call once when the TCP connection is up.
    public mutating func start(into out: inout [Output]) {
        guard case .idle = phase else { return }
        phase = .handshaking(Handshaking())
        send(encodeFrame(.linkHello, hello.encode()), &out)
    }

    /// Feeds bytes received from the peer.
    public mutating func receive<C: Collection>(_ bytes: C, nowUs: UInt64, into out: inout [Output]) where C.Element == UInt8 {
        if isClosed { return }
        lastReceiveUs = nowUs
        assembler.append(bytes)
        while !isClosed {
            let frame: RawFrame?
            do { frame = try assembler.next() } catch {
                fail(error, &out); return
            }
            guard let f = frame else { return }
            framesReceived += 1
            do { try handle(f, nowUs: nowUs, &out) } catch { fail(error, &out) }
        }
    }

    /// The peer closed its side of the stream.
    public mutating func receiveEOF(into out: inout [Output]) {
        if isClosed { return }
        if assembler.bufferedBytes > 0 {
            do { try assembler.finish() } catch { fail(error, &out); return }
        }
        phase = .closed(.peerClosed); out.append(.close(.peerClosed))
    }

    /// Advances time: handshake timeout, silence timeout, heartbeats.
    public mutating func tick(nowUs: UInt64, into out: inout [Output]) {
        switch phase {
        case .idle, .closed: return
        case .handshaking:
            if nowUs &- startUs >= limits.handshakeTimeoutMs * 1000 {
                refuse(Refusal(.timeout, "handshake not finished within \(limits.handshakeTimeoutMs) ms"), &out)
            }
        case var .open(o):
            let silentUs = nowUs &- lastReceiveUs
            if silentUs >= limits.peerSilenceTimeoutMs * 1000 {
                phase = .closed(.peerSilent(ms: silentUs / 1000)); out.append(.close(.peerSilent(ms: silentUs / 1000)))
                return
            }
            if nowUs &- o.lastPingUs >= limits.heartbeatIntervalMs * 1000 {
                var w = ByteWriter(capacity: 8); w.u64(nowUs)
                o.lastPingUs = nowUs
                let bytes = o.sealer.seal(FrameType.ping.rawValue, w.bytes)
                phase = .open(o)
                send(bytes, &out)
            }
        }
    }

    /// Seals one encoded message for sending; nil unless the session is open.
    public mutating func seal(_ type: FrameType, _ payload: [UInt8]) -> [UInt8]? {
        guard case var .open(o) = phase else { return nil }
        let bytes = o.sealer.seal(type.rawValue, payload)
        phase = .open(o); framesSent += 1
        return bytes
    }

    /// Ends the connection from this side with a reason the peer will see.
    public mutating func close(_ refusal: Refusal, as reason: CloseReason? = nil, into out: inout [Output]) {
        if isClosed { return }
        refuse(refusal, &out)
        if let r = reason { phase = .closed(r); out[out.count - 1] = .close(r) }
    }

    /// Marks the connection closed without sending anything (I/O error, local shutdown).
    public mutating func abort(_ reason: CloseReason) {
        if !isClosed { phase = .closed(reason) }
    }

    // MARK: - internals

    mutating func send(_ bytes: [UInt8], _ out: inout [Output]) { out.append(.send(bytes)) }

    mutating func fail(_ error: Error, _ out: inout [Output]) {
        let text = (error as? DecodeError)?.description ?? "\(error)"
        refuse(Refusal(isOpen ? .protocolError : .badHandshake, isOpen ? "protocol error: \(text)" : "bad handshake: \(text)"), &out)
    }

    /// Tells the peer why (sealed if the session is open, so it cannot be forged), then closes.
    mutating func refuse(_ r: Refusal, _ out: inout [Output]) {
        switch phase {
        case var .open(o):
            send(o.sealer.seal(FrameType.refuse.rawValue, r.encode()), &out)
            phase = .open(o)
        case var .handshaking(h):
            // Once this side sent its sealed `ready`, the peer opens the session on reading it and verifies every
            // later frame: a refusal after that point must be sealed too.
            if var sealer = h.sealer {
                send(sealer.seal(FrameType.refuse.rawValue, r.encode()), &out)
                h.sealer = sealer; phase = .handshaking(h)
            } else {
                send(encodeFrame(.refuse, r.encode()), &out)
            }
        case .idle:
            send(encodeFrame(.refuse, r.encode()), &out)
        case .closed:
            return
        }
        phase = .closed(.refusedLocally(r)); out.append(.close(.refusedLocally(r)))
    }

    mutating func handle(_ f: RawFrame, nowUs: UInt64, _ out: inout [Output]) throws(DecodeError) {
        guard let type = FrameType(rawValue: f.type) else { throw .unknownFrameType(f.type) }
        switch phase {
        case .idle, .closed:
            return
        case var .handshaking(h):
            try handshake(&h, type, f, nowUs: nowUs, &out)
            if case .handshaking = phase { phase = .handshaking(h) }
        case var .open(o):
            let n = try o.opener.open(f)
            phase = .open(o)
            switch type {
            case .ping:
                guard n == 8 else { throw .badCount(field: "ping", count: n, limit: 8) }
                let bytes = o.sealer.seal(FrameType.pong.rawValue, Array(f.body[0..<8]))
                phase = .open(o)
                send(bytes, &out)
            case .pong:
                var r = ByteReader(f.body, to: n)
                let sent = try r.u64("pong.time"); try r.expectEnd()
                if sent <= nowUs { out.append(.rtt(microseconds: nowUs - sent)) }
            case .refuse:
                let r = try Refusal.decode(f.body, to: n)
                phase = .closed(.refusedByPeer(r)); out.append(.close(.refusedByPeer(r)))
            case .linkHello, .proof, .ready:
                throw .unexpectedFrameType(type.rawValue, phase: "after the handshake")
            case .verifyRequest, .verifyAnswer:
                out.append(.deliverVerify(try VerifyCodec.decode(type, f.body, from: 0, to: n)))
            case .hello, .mark, .markReply, .pull, .pullAnswer, .ack, .push, .release:
                out.append(.deliver(try MessageCodec.decode(type, f.body, from: 0, to: n)))
            }
        }
    }

    mutating func handshake(_ h: inout Handshaking, _ type: FrameType, _ f: RawFrame, nowUs: UInt64,
                            _ out: inout [Output]) throws(DecodeError) {
        if type == .refuse {
            // Unauthenticated: believed only as a reason to stop, never as a fact about the peer.
            let r = try Refusal.decode(f.body)
            phase = .closed(.refusedByPeer(r)); out.append(.close(.refusedByPeer(r)))
            return
        }
        if h.peer == nil {
            guard type == .linkHello else { throw .unexpectedFrameType(type.rawValue, phase: "before the hello") }
            let p = try LinkHello.decode(f.body)
            h.peer = p
            if let r = check(p) { refuse(r, &out); return }
            let version = min(hello.maxVersion, p.maxVersion)
            let c = HandshakeCrypto(secret: identity.secret, version: version, mine: hello, peer: p)
            h.crypto = c
            send(encodeFrame(.proof, c.myProof), &out)
            return
        }
        guard let c = h.crypto else { return }
        if h.opener == nil {
            guard type == .proof else { throw .unexpectedFrameType(type.rawValue, phase: "before the proof") }
            guard c.verifyPeerProof(f.body) else {
                refuse(Refusal(.authenticationFailed, "authentication failed: peer \(c.peer.node) (\(c.peer.nodeName)) does not know this volume's secret (wrong or missing secret file)"), &out)
                return
            }
            var sealer = FrameSealer(key: c.sessionKey(sender: identity.node))
            h.opener = FrameOpener(key: c.sessionKey(sender: c.peer.node))
            send(sealer.seal(FrameType.ready.rawValue, []), &out)
            h.sealer = sealer; h.sentReady = true
            // From here on the peer's frames are sealed: sealed frames may be larger than handshake frames.
            assembler.maxFrameBytes = limits.maxFrameBytes
            return
        }
        guard type == .ready, var opener = h.opener, let sealer = h.sealer else {
            throw .unexpectedFrameType(type.rawValue, phase: "before the peer's ready")
        }
        let n = try opener.open(f)
        if n != 0 { throw .trailingBytes(n) }
        let dialer = role == .dialer ? identity.node : c.peer.node
        let info = SessionInfo(version: c.version, epoch: max(hello.epochProposal, c.peer.epochProposal), role: role,
                               peerNode: c.peer.node, peerName: c.peer.nodeName, dialer: dialer, peerPromotion: c.peer.promotion)
        phase = .open(Open(info: info, sealer: sealer, opener: opener, lastPingUs: nowUs))
        out.append(.established(info))
    }

    /// The refusal for a peer hello this side will not talk to, nil if acceptable.
    func check(_ p: LinkHello) -> Refusal? {
        if max(hello.minVersion, p.minVersion) > min(hello.maxVersion, p.maxVersion) {
            return Refusal(.unsupportedVersion, "unsupported protocol version: peer \(p.node) (\(p.nodeName)) speaks \(p.minVersion)...\(p.maxVersion), this node \(hello.minVersion)...\(hello.maxVersion)")
        }
        if p.volumeID != identity.volumeID {
            return Refusal(.volumeMismatch, "volume mismatch: this node \(identity.node) (\(identity.nodeName)) serves volume \(identity.volumeID), peer \(p.node) (\(p.nodeName)) serves \(p.volumeID)")
        }
        if p.node == identity.node {
            return Refusal(.duplicateNodeID, "duplicate node id \(p.node): peer (\(p.nodeName)) and this node (\(identity.nodeName)) have the same id")
        }
        if let e = identity.expectedPeer, e != p.node {
            return Refusal(.unexpectedNode, "unexpected peer node \(p.node) (\(p.nodeName)): this node (\(identity.nodeName)) pairs with \(e)")
        }
        return nil
    }
}
