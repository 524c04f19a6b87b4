// PeerLink — the SwiftNIO shell: a listener, a dialer, one authenticated connection per pair, and a bounded outbox.
// Owns: sockets, timers, reconnect with capped exponential backoff, the one-connection rule, epochs, events.
// Must never: decide protocol questions (ConnectionMachine does), buffer without bound (send reports backpressure),
// or hand the caller a message from a connection that is not the current one.
import Foundation
import MirrorCore
import NIOCore
import NIOPosix

public struct PeerLinkConfig: Sendable {
    public var identity: LinkIdentity
    /// Address to listen on (port 0: an ephemeral port, see `PeerLink.listeningPort`); nil: dial only.
    public var listenHost: String?
    public var listenPort: Int
    /// The peer's address; nil: listen only.
    public var peerHost: String?
    public var peerPort: Int
    public var limits = ConnectionLimits()
    /// Bytes and frames written to the current connection and not yet taken by the kernel; `send` refuses beyond.
    public var maxQueuedBytes = 8 << 20
    public var maxQueuedFrames = 4096
    public var backoffInitialMs: UInt64 = 100
    public var backoffMaxMs: UInt64 = 5_000
    /// Connections still in their handshake; more are closed at once (garbage on the port cannot pile up).
    public var maxPendingHandshakes = 8
    /// After a refusal, how long to wait for the peer to read it and close before closing anyway.
    public var lingerMs: UInt64 = 1_000
    /// Random bytes for nonces and backoff jitter (injectable for tests).
    public var randomBytes: @Sendable (Int) -> [UInt8] = { n in (0..<n).map { _ in UInt8.random(in: 0...255) } }
    /// This node's promotion claim, read at every handshake (it changes when an operator promotes or a node demotes).
    public var promotionClaim: @Sendable () -> PromotionClaim = { .none }

    public init(identity: LinkIdentity, listenHost: String? = "127.0.0.1", listenPort: Int = 0,
                peerHost: String? = nil, peerPort: Int = 0) {
        self.identity = identity; self.listenHost = listenHost; self.listenPort = listenPort
        self.peerHost = peerHost; self.peerPort = peerPort
    }

    /// Reads a secret file: its bytes, exactly. Throws if it cannot be read or is shorter than 16 bytes.
    public static func readSecret(path: String) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path) else { throw PeerLinkError.secretUnreadable(path) }
        guard d.count >= LinkIdentity.minSecretBytes else { throw PeerLinkError.secretTooShort(path, d.count) }
        return Array(d)
    }
}

public enum PeerLinkError: Error, CustomStringConvertible {
    case secretUnreadable(String)
    case secretTooShort(String, Int)
    case badConfig([String])
    public var description: String {
        switch self {
        case let .secretUnreadable(p): return "cannot read the secret file \(p)"
        case let .secretTooShort(p, n): return "the secret file \(p) has \(n) bytes; at least \(LinkIdentity.minSecretBytes) are needed"
        case let .badConfig(p): return "bad link configuration: " + p.joined(separator: "; ")
        }
    }
}

/// What the link tells its owner, in order, on the link's event loop thread (do not block in the handler).
public enum LinkEvent: Sendable {
    /// A new authenticated connection; feed `connectionUp(epoch:)` to the core.
    case connected(epoch: UInt64, peer: SessionInfo)
    /// A message of the current connection.
    case message(Message)
    /// The current connection ended; everything in flight is lost.
    case disconnected(epoch: UInt64, reason: CloseReason)
    /// A connection that never became current was refused or failed in its handshake (either side's reason).
    case rejected(reason: CloseReason, remote: String)
    /// The outbox of the current connection drained below half after a `send` was refused as full.
    case writable(epoch: UInt64)
    /// A `twinfs verify` message of the current connection (never for the core).
    case verify(epoch: UInt64, VerifyMessage)
}

public enum SendResult: Equatable, Sendable {
    case queued
    case notConnected
    /// Backpressure: the outbox is full; wait for `.writable`.
    case queueFull
    /// The message cannot fit in frames of `maxFrameBytes` (a single datum larger than a track).
    case tooLarge
}

public struct LinkStatus: Sendable {
    public var connected: Bool
    public var epoch: UInt64
    public var peer: SessionInfo?
    /// Monotonic-clock time (ns, `DispatchTime` uptime) when the current connection became current.
    public var connectedSinceUptimeNs: UInt64?
    public var lastRTTMicroseconds: UInt64?
    /// Exponentially smoothed (1/8) round trip time.
    public var smoothedRTTMicroseconds: UInt64?
    public var queuedBytes: Int
    public var queuedFrames: Int
    public var connections: Int
    public var rejections: Int
    public var messagesSent: Int
    public var messagesReceived: Int
    /// Bytes written to and read from every connection since start (frames, handshakes and heartbeats included):
    /// what the link really cost, e.g. for a resync after a partition.
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Why the last dial of the peer failed (TCP level: refused, unreachable, timed out); nil once connected.
    public var lastDialError: String?
}

/// Capped exponential backoff with ±20% jitter from injected random bytes.
public struct Backoff: Sendable {
    public var initialMs: UInt64
    public var maxMs: UInt64
    public private(set) var attempt: UInt32 = 0
    public init(initialMs: UInt64, maxMs: UInt64) { self.initialMs = initialMs; self.maxMs = maxMs }
    public mutating func reset() { attempt = 0 }
    /// The next delay; `random16` is a uniformly random value in 0...65535.
    public mutating func next(random16: UInt16) -> UInt64 {
        let base = min(maxMs, initialMs << min(UInt64(attempt), 20))
        attempt &+= 1
        let jitter = Int64(base) * (Int64(random16) - 32768) / (32768 * 5)
        return UInt64(max(1, Int64(base) + jitter))
    }
}

/// The outbox of one connection: counts what was handed to NIO and not yet written to the socket.
final class Outbox: @unchecked Sendable {
    let channel: Channel
    let epoch: UInt64
    let maxBytes: Int, maxFrames: Int
    private let lock = NSLock()
    private var bytes = 0, frames = 0, blocked = false, flushPending = false

    init(channel: Channel, epoch: UInt64, maxBytes: Int, maxFrames: Int) {
        self.channel = channel; self.epoch = epoch; self.maxBytes = maxBytes; self.maxFrames = maxFrames
    }
    func reserve(bytes b: Int, frames f: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if bytes + b > maxBytes || frames + f > maxFrames { blocked = true; return false }
        bytes += b; frames += f
        return true
    }
    /// Returns true when a refused sender should now be told it may send again.
    func release(bytes b: Int, frames f: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        bytes -= b; frames -= f
        assert(bytes >= 0 && frames >= 0, "outbox released more than it reserved")
        if blocked && bytes <= maxBytes / 2 && frames <= maxFrames / 2 { blocked = false; return true }
        return false
    }
    var queued: (bytes: Int, frames: Int) { lock.lock(); defer { lock.unlock() }; return (bytes, frames) }

    /// One flush for a burst of sends: true if the caller must schedule it (none is pending yet). Called on the
    /// channel's event loop only, after the writes it covers.
    func needsFlush() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if flushPending { return false }
        flushPending = true
        return true
    }
    func flushed() { lock.lock(); flushPending = false; lock.unlock() }
}

struct OutboundItem {
    var type: FrameType
    var payload: [UInt8]
}

func nowMicroseconds() -> UInt64 { DispatchTime.now().uptimeNanoseconds / 1000 }

public final class PeerLink: @unchecked Sendable {
    public let config: PeerLinkConfig
    let loop: EventLoop
    let ownedGroup: EventLoopGroup?
    let onEvent: (LinkEvent) -> Void

    // Confined to `loop`.
    var server: Channel?
    var handlers: [ObjectIdentifier: ConnectionHandler] = [:]
    var active: ConnectionHandler?
    var lastEpoch: UInt64 = 0
    var backoff: Backoff
    var dialTask: Scheduled<Void>?
    var dialInProgress = false
    /// The handler of the dial in progress, once its channel exists.
    var dialHandler: ConnectionHandler?
    var stopped = false
    var pendingHandshakes = 0
    var peerHost: String?
    var peerPort: Int

    // Read from any thread.
    private let lock = NSLock()
    private var outbox: Outbox?
    private var stopCalled = false
    private var statusValue: LinkStatus

    /// Starts listening and/or dialing. Must not be called on an event loop (it waits for the bind).
    /// `group`: an event loop group to borrow one loop from; by default the link owns a one-thread group.
    public static func start(_ config: PeerLinkConfig, group: EventLoopGroup? = nil,
                             onEvent: @escaping (LinkEvent) -> Void) throws -> PeerLink {
        var problems = config.identity.problems()
        if config.listenHost == nil && config.peerHost == nil { problems.append("neither a listen address nor a peer") }
        if config.maxQueuedBytes < config.limits.maxFrameBytes { problems.append("maxQueuedBytes below maxFrameBytes") }
        if config.limits.maxFrameBytes < 1024 { problems.append("maxFrameBytes below 1024") }
        if !problems.isEmpty { throw PeerLinkError.badConfig(problems) }
        let link = PeerLink(config: config, group: group, onEvent: onEvent)
        do { try link.bindAndDial() } catch { link.stop(); throw error }
        return link
    }

    init(config: PeerLinkConfig, group: EventLoopGroup?, onEvent: @escaping (LinkEvent) -> Void) {
        self.config = config; self.onEvent = onEvent
        if let g = group { ownedGroup = nil; loop = g.next() } else {
            let g = MultiThreadedEventLoopGroup(numberOfThreads: 1); ownedGroup = g; loop = g.next()
        }
        backoff = Backoff(initialMs: config.backoffInitialMs, maxMs: config.backoffMaxMs)
        peerHost = config.peerHost; peerPort = config.peerPort
        statusValue = LinkStatus(connected: false, epoch: 0, peer: nil, connectedSinceUptimeNs: nil, lastRTTMicroseconds: nil,
                                 smoothedRTTMicroseconds: nil, queuedBytes: 0, queuedFrames: 0, connections: 0,
                                 rejections: 0, messagesSent: 0, messagesReceived: 0)
    }

    func bindAndDial() throws {
        if let host = config.listenHost {
            let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
                .serverChannelOption(ChannelOptions.backlog, value: 16)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { [weak self] ch in
                    guard let self else { return ch.close() }
                    return ch.eventLoop.submit {
                        guard !self.stopped, self.pendingHandshakes < self.config.maxPendingHandshakes else {
                            ch.close(promise: nil); return
                        }
                        try ch.pipeline.syncOperations.addHandler(self.makeHandler(role: .listener))
                    }
                }
            server = try bootstrap.bind(host: host, port: config.listenPort).wait()
        }
        if config.peerHost != nil { loop.execute { self.scheduleDial(immediately: self.dialsFirst) } }
    }

    /// The lower node id dials at once, the higher one a backoff later: fewer simultaneous dials.
    var dialsFirst: Bool { config.identity.expectedPeer.map { config.identity.node < $0 } ?? true }

    /// Sets (or changes) the peer's address and dials it unless a connection is up.
    public func setPeer(host: String, port: Int) {
        loop.execute {
            self.peerHost = host; self.peerPort = port
            self.scheduleDial(immediately: self.dialsFirst)
        }
    }

    /// The port the listener is bound to (useful with port 0).
    public var listeningPort: Int? { server?.localAddress?.port }

    public var status: LinkStatus {
        lock.lock(); defer { lock.unlock() }
        var s = statusValue
        if let o = outbox { (s.queuedBytes, s.queuedFrames) = o.queued }
        return s
    }

    /// Queues `message` on the current connection; false if it was not queued (see `trySend`). Thread-safe.
    @discardableResult public func send(_ message: Message) -> Bool { trySend(message) == .queued }

    /// `epoch`: send only on that connection (a message the core produced for an earlier connection must not
    /// reach the peer on a later one, ahead of that connection's hello).
    public func trySend(_ message: Message, epoch: UInt64? = nil) -> SendResult {
        let maxPayload = config.limits.maxFrameBytes - 1 - FrameLimits.macBytes
        guard let parts = MessageCodec.split(message, maxPayloadBytes: maxPayload) else { return .tooLarge }
        var items: [OutboundItem] = []
        var total = 0
        for p in parts {
            let (t, payload) = MessageCodec.encode(p)
            if payload.count > maxPayload { return .tooLarge }
            total += payload.count + FrameLimits.lengthBytes + 1 + FrameLimits.macBytes
            items.append(OutboundItem(type: t, payload: payload))
        }
        lock.lock()
        let ob = outbox
        lock.unlock()
        guard let o = ob, epoch.map({ $0 == o.epoch }) ?? true else { return .notConnected }
        guard o.reserve(bytes: total, frames: items.count) else { return .queueFull }
        // The writes and the decision to flush run in one task on the loop: a flush is scheduled by the first
        // write that finds none scheduled, and it runs after every write queued before it, so each message is
        // flushed (a burst of sends still costs one flush). Deciding on the sending thread lost wake-ups: a
        // write queued behind an already scheduled flush waited for the next send or heartbeat.
        let channel = o.channel
        channel.eventLoop.execute { [weak self] in
            for item in items {
                let size = item.payload.count + FrameLimits.lengthBytes + 1 + FrameLimits.macBytes
                channel.write(item).whenComplete { _ in
                    if o.release(bytes: size, frames: 1), let self {
                        self.loop.execute { if self.active?.epoch == o.epoch { self.onEvent(.writable(epoch: o.epoch)) } }
                    }
                }
            }
            if o.needsFlush() {
                channel.eventLoop.execute { o.flushed(); channel.flush() }
            }
        }
        lock.lock(); statusValue.messagesSent += 1; lock.unlock()
        return .queued
    }

    /// Queues a `twinfs verify` message on the current connection (on `epoch` only, if given). Thread-safe. No
    /// backlog: a verify message that finds the outbox full is refused (the caller waits and tries again).
    public func sendVerify(_ message: VerifyMessage, epoch: UInt64? = nil) -> SendResult {
        let (t, payload) = VerifyCodec.encode(message)
        let maxPayload = config.limits.maxFrameBytes - 1 - FrameLimits.macBytes
        if payload.count > maxPayload { return .tooLarge }
        let size = payload.count + FrameLimits.lengthBytes + 1 + FrameLimits.macBytes
        lock.lock()
        let ob = outbox
        lock.unlock()
        guard let o = ob, epoch.map({ $0 == o.epoch }) ?? true else { return .notConnected }
        guard o.reserve(bytes: size, frames: 1) else { return .queueFull }
        let channel = o.channel
        let item = OutboundItem(type: t, payload: payload)
        channel.eventLoop.execute { [weak self] in
            channel.write(item).whenComplete { _ in
                if o.release(bytes: size, frames: 1), let self {
                    self.loop.execute { if self.active?.epoch == o.epoch { self.onEvent(.writable(epoch: o.epoch)) } }
                }
            }
            if o.needsFlush() {
                channel.eventLoop.execute { o.flushed(); channel.flush() }
            }
        }
        return .queued
    }

    /// Closes the current connection (the link then reconnects). For tests and operator commands.
    public func dropConnection() {
        loop.execute { self.active?.closeWith(Refusal(.goingAway, "connection dropped by \(self.config.identity.nodeName)"), linger: true) }
    }

    /// Closes everything and stops reconnecting; returns after the last event was delivered. Idempotent. Must not be
    /// called from an event handler (it waits for the link's loop).
    public func stop() {
        precondition(!loop.inEventLoop, "PeerLink.stop() called on the link's own event loop (from onEvent?)")
        lock.lock()
        let already = stopCalled
        stopCalled = true
        lock.unlock()
        if already { return }
        let done: EventLoopFuture<Void> = loop.flatSubmit {
            self.stopped = true
            self.dialTask?.cancel(); self.dialTask = nil
            var futures: [EventLoopFuture<Void>] = []
            if let s = self.server { futures.append(s.close().recover { _ in }) ; self.server = nil }
            for h in self.handlers.values {
                futures.append(h.channelClosed)
                h.closeWith(Refusal(.goingAway, "node \(self.config.identity.nodeName) is stopping"), as: .stopped, linger: true)
            }
            return EventLoopFuture.andAllComplete(futures, on: self.loop)
        }
        try? done.wait()
        try? ownedGroup?.syncShutdownGracefully()
    }

    // MARK: - loop-confined internals

    func makeHandler(role: ConnectionRole) -> ConnectionHandler {
        loop.preconditionInEventLoop()
        pendingHandshakes += 1
        let epochProposal = lastEpoch + 1
        let nonce = config.randomBytes(LinkHello.nonceBytes)
        let machine = ConnectionMachine(identity: config.identity, role: role, nonce: nonce, epochProposal: epochProposal,
                                        promotion: config.promotionClaim(), limits: config.limits, nowUs: nowMicroseconds())
        let h = ConnectionHandler(link: self, machine: machine)
        handlers[ObjectIdentifier(h)] = h
        return h
    }

    func scheduleDial(immediately: Bool = false) {
        loop.preconditionInEventLoop()
        guard !stopped, active == nil, !dialInProgress, dialTask == nil, let host = peerHost else { return }
        let r = config.randomBytes(2)
        let delayMs = immediately ? 0 : backoff.next(random16: UInt16(r[0]) << 8 | UInt16(r[1]))
        dialTask = loop.scheduleTask(in: .milliseconds(Int64(delayMs))) { [weak self] in
            guard let self else { return }
            self.dialTask = nil
            guard !self.stopped, self.active == nil, !self.dialInProgress else { return }
            self.dialInProgress = true
            ClientBootstrap(group: self.loop)
                .connectTimeout(.milliseconds(Int64(self.config.limits.handshakeTimeoutMs)))
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { ch in
                    ch.eventLoop.submit {
                        let h = self.makeHandler(role: .dialer)
                        self.dialHandler = h
                        try ch.pipeline.syncOperations.addHandler(h)
                    }
                }
                .connect(host: host, port: self.peerPort)
                .whenFailure { error in
                    // The handler (if one was made) reports its own close; a refused TCP connect just retries.
                    self.lock.lock(); self.statusValue.lastDialError = "\(host):\(self.peerPort): \(error)"; self.lock.unlock()
                    self.dialInProgress = false; self.dialHandler = nil
                    self.scheduleDial()
                }
        }
    }

    func established(_ h: ConnectionHandler, _ info: SessionInfo) {
        loop.preconditionInEventLoop()
        if dialHandler === h { dialInProgress = false; dialHandler = nil }
        pendingHandshakes -= 1
        h.counted = false
        if stopped { h.closeWith(Refusal(.goingAway, "node is stopping"), linger: false); return }
        if let a = active, let ai = a.info {
            // One connection per pair: keep the one dialed by the lower node id; from the same dialer, the newer one
            // (the older is a leftover the dialer gave up on). Both ends apply the same rule and agree.
            if info.dialer > ai.dialer {
                h.closeWith(Refusal(.duplicateConnection, "duplicate connection: the one dialed by \(ai.dialer) is kept"), as: .replaced, linger: true)
                return
            }
            active = nil
            setOutbox(nil, info: nil)
            onEvent(.disconnected(epoch: a.epoch, reason: .replaced))
            a.closeWith(Refusal(.duplicateConnection, "duplicate connection: replaced by one dialed by \(info.dialer)"), as: .replaced, linger: true)
        }
        let epoch = max(info.epoch, lastEpoch + 1)
        lastEpoch = epoch
        h.epoch = epoch
        active = h
        backoff.reset()
        dialTask?.cancel(); dialTask = nil
        setOutbox(Outbox(channel: h.channel!, epoch: epoch, maxBytes: config.maxQueuedBytes, maxFrames: config.maxQueuedFrames), info: info)
        onEvent(.connected(epoch: epoch, peer: info))
    }

    func setOutbox(_ o: Outbox?, info: SessionInfo?) {
        lock.lock(); defer { lock.unlock() }
        outbox = o
        statusValue.connected = o != nil
        statusValue.peer = info
        if let o {
            statusValue.epoch = o.epoch; statusValue.connections += 1; statusValue.lastDialError = nil
            statusValue.connectedSinceUptimeNs = DispatchTime.now().uptimeNanoseconds
        } else {
            statusValue.connectedSinceUptimeNs = nil
        }
    }

    func deliver(_ h: ConnectionHandler, _ m: Message) {
        guard active === h else { return }
        lock.lock(); statusValue.messagesReceived += 1; lock.unlock()
        onEvent(.message(m))
    }

    func deliverVerify(_ h: ConnectionHandler, _ m: VerifyMessage) {
        guard active === h else { return }
        onEvent(.verify(epoch: h.epoch, m))
    }

    func count(sent: Int = 0, received: Int = 0) {
        lock.lock()
        statusValue.bytesSent &+= UInt64(sent); statusValue.bytesReceived &+= UInt64(received)
        lock.unlock()
    }

    func rtt(_ h: ConnectionHandler, _ us: UInt64) {
        guard active === h else { return }
        lock.lock(); defer { lock.unlock() }
        statusValue.lastRTTMicroseconds = us
        statusValue.smoothedRTTMicroseconds = statusValue.smoothedRTTMicroseconds.map { ($0 * 7 + us) / 8 } ?? us
    }

    /// Forgets a handler that never reported (its connection never came up); the dial's failure path retries.
    func handlerGone(_ h: ConnectionHandler) {
        handlers[ObjectIdentifier(h)] = nil
        if h.counted { pendingHandshakes -= 1; h.counted = false }
        if dialHandler === h { dialHandler = nil }
    }

    func closed(_ h: ConnectionHandler, _ reason: CloseReason, remote: String) {
        loop.preconditionInEventLoop()
        handlers[ObjectIdentifier(h)] = nil
        if h.counted { pendingHandshakes -= 1; h.counted = false }
        if active === h {
            active = nil
            setOutbox(nil, info: nil)
            onEvent(.disconnected(epoch: h.epoch, reason: reason))
        } else if h.info == nil {
            lock.lock(); statusValue.rejections += 1; lock.unlock()
            onEvent(.rejected(reason: reason, remote: remote))
        }
        if dialHandler === h { dialInProgress = false; dialHandler = nil }
        if active == nil { scheduleDial() }
    }
}

/// Thin NIO shell around one ConnectionMachine: bytes in, outputs executed.
final class ConnectionHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = OutboundItem
    typealias OutboundOut = ByteBuffer

    unowned let link: PeerLink
    var machine: ConnectionMachine
    var context: ChannelHandlerContext?
    var channel: Channel?
    var info: SessionInfo?
    var epoch: UInt64 = 0
    var counted = true
    var reported = false
    var finished = false
    var closing = false
    var remote = "?"
    var timer: RepeatedTask?
    let closedPromise: EventLoopPromise<Void>
    var channelClosed: EventLoopFuture<Void> { closedPromise.futureResult }
    var out: [ConnectionMachine.Output] = []

    init(link: PeerLink, machine: ConnectionMachine) {
        self.link = link; self.machine = machine
        closedPromise = link.loop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context; channel = context.channel
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func start(_ context: ChannelHandlerContext) {
        guard timer == nil, !machine.isClosed else { return }
        remote = context.channel.remoteAddress.map { "\($0)" } ?? "?"
        machine.start(into: &out)
        let period = max(10, Int64(min(machine.limits.heartbeatIntervalMs, machine.limits.handshakeTimeoutMs) / 4))
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(period), delay: .milliseconds(period)) { [weak self] _ in
            guard let self else { return }
            self.machine.tick(nowUs: nowMicroseconds(), into: &self.out)
            self.run()
        }
        run()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buf = unwrapInboundIn(data)
        link.count(received: buf.readableBytes)
        if closing { return }   // after a refusal, input is drained and ignored until the peer closes
        buf.withUnsafeReadableBytes { machine.receive($0, nowUs: nowMicroseconds(), into: &out) }
        run()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let item = unwrapOutboundIn(data)
        guard !closing, let bytes = machine.seal(item.type, item.payload) else {
            promise?.fail(ChannelError.ioOnClosedChannel); return
        }
        link.count(sent: bytes.count)
        var b = context.channel.allocator.buffer(capacity: bytes.count)
        b.writeBytes(bytes)
        context.write(wrapOutboundOut(b), promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel(); timer = nil
        if !machine.isClosed { machine.receiveEOF(into: &out); out.removeAll() }
        report(machine.closeReason ?? .peerClosed)
        finish()
        context.fireChannelInactive()
    }

    /// A handler whose channel never became active (a failed connect) is removed without channelInactive.
    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel(); timer = nil
        if !reported {
            reported = true
            link.handlerGone(self)
        }
        finish()
        self.context = nil
    }

    func finish() {
        guard !finished else { return }
        finished = true
        closedPromise.succeed(())
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        machine.abort(.ioError("\(error)"))
        context.close(promise: nil)
    }

    func report(_ reason: CloseReason) {
        guard !reported else { return }
        reported = true
        link.closed(self, reason, remote: remote)
    }

    /// Executes the machine's outputs in order.
    func run() {
        guard let context else { out.removeAll(); return }
        var wrote = false
        var i = 0
        while i < out.count {
            let o = out[i]; i += 1
            switch o {
            case let .send(bytes):
                link.count(sent: bytes.count)
                var b = context.channel.allocator.buffer(capacity: bytes.count)
                b.writeBytes(bytes)
                context.write(wrapOutboundOut(b), promise: nil); wrote = true
            case let .established(s):
                info = s
                link.established(self, s)
            case let .deliver(m):
                link.deliver(self, m)
            case let .deliverVerify(m):
                link.deliverVerify(self, m)
            case let .rtt(us):
                link.rtt(self, us)
            case .close:
                if wrote { context.flush(); wrote = false }
                beginClose(linger: true)
            }
        }
        out.removeAll(keepingCapacity: true)
        if wrote { context.flush() }
    }

    /// Sends a refusal or goodbye (if the machine is not closed yet) and closes.
    func closeWith(_ r: Refusal, as reason: CloseReason? = nil, linger: Bool) {
        guard let context else { return }
        if !machine.isClosed {
            var o: [ConnectionMachine.Output] = []
            machine.close(r, as: reason, into: &o)
            for case let .send(bytes) in o {
                var b = context.channel.allocator.buffer(capacity: bytes.count)
                b.writeBytes(bytes)
                context.write(wrapOutboundOut(b), promise: nil)
            }
            context.flush()
        }
        beginClose(linger: linger)
    }

    /// Half-closes (so the peer reads the refusal before the connection goes), then closes fully after the linger.
    func beginClose(linger: Bool) {
        guard let context, !closing else { return }
        closing = true
        timer?.cancel(); timer = nil
        if !linger { context.close(promise: nil); return }
        // The timer and the fallback close the channel, not the context: the handler may be gone by then.
        let channel = context.channel
        let p = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: p)
        p.futureResult.whenFailure { _ in channel.close(promise: nil) }
        context.eventLoop.scheduleTask(in: .milliseconds(Int64(link.config.lingerMs))) { channel.close(promise: nil) }
    }
}
