// PeerLinkTests — two real links over TCP on 127.0.0.1 with ephemeral ports: authentication, every message both
// ways, refusals, garbage, reconnect after a restart, simultaneous dials, backpressure, loopback throughput.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import MirrorCore
import XCTest
@testable import PeerLink

/// Collects a link's events and lets a test wait for a condition on them.
final class Recorder: @unchecked Sendable {
    private let cond = NSCondition()
    private var all: [LinkEvent] = []
    private var messageTotal = 0

    func record(_ e: LinkEvent) {
        cond.lock()
        all.append(e)
        if case .message = e { messageTotal += 1 }
        cond.broadcast(); cond.unlock()
    }
    /// Cheap (no copy), for waiting on many messages.
    var messageCount: Int { cond.lock(); defer { cond.unlock() }; return messageTotal }
    var events: [LinkEvent] { cond.lock(); defer { cond.unlock() }; return all }

    /// Waits until `pred` holds (true) or the timeout passes (false). The predicate runs outside the lock (it may read
    /// this recorder or a link's status), at every event and at least every 20 ms.
    @discardableResult
    func wait(seconds: Double = 10, _ pred: ([LinkEvent]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let snapshot = events
            if pred(snapshot) { return true }
            if Date() >= deadline { return false }
            cond.lock()
            if all.count == snapshot.count { _ = cond.wait(until: min(deadline, Date().addingTimeInterval(0.02))) }
            cond.unlock()
        }
    }

    var messages: [Message] { events.compactMap { if case let .message(m) = $0 { return m }; return nil } }
    var connected: [(UInt64, SessionInfo)] { events.compactMap { if case let .connected(e, p) = $0 { return (e, p) }; return nil } }
    var disconnected: [(UInt64, CloseReason)] { events.compactMap { if case let .disconnected(e, r) = $0 { return (e, r) }; return nil } }
    var rejected: [CloseReason] { events.compactMap { if case let .rejected(r, _) = $0 { return r }; return nil } }
}

func fastConfig(_ identity: LinkIdentity, listenPort: Int = 0, peerPort: Int? = nil) -> PeerLinkConfig {
    var c = PeerLinkConfig(identity: identity, listenHost: "127.0.0.1", listenPort: listenPort,
                           peerHost: peerPort == nil ? nil : "127.0.0.1", peerPort: peerPort ?? 0)
    c.limits.heartbeatIntervalMs = 100
    c.limits.peerSilenceTimeoutMs = 3_000
    c.limits.handshakeTimeoutMs = 2_000
    c.backoffInitialMs = 20
    c.backoffMaxMs = 300
    c.lingerMs = 300
    return c
}

/// Connects a plain TCP socket, writes `bytes`, and reads until the server closes (or 5 s pass).
func rawExchange(port: Int, send bytes: [UInt8]) -> (received: [UInt8], closedByServer: Bool) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0, "socket")
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    precondition(rc == 0, "connect")
    var tv = timeval(tv_sec: 0, tv_usec: 200_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    let deadline = Date().addingTimeInterval(5)
    while Date() < deadline {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 { return (out, true) }
        if n < 0 { if errno == EAGAIN || errno == EWOULDBLOCK { continue }; return (out, true) }
        out += buf[0..<n]
    }
    return (out, false)
}

final class LinkTests: XCTestCase {
    var links: [PeerLink] = []
    override func tearDown() { for l in links { l.stop() }; links.removeAll() }

    func start(_ c: PeerLinkConfig, _ r: Recorder) throws -> PeerLink {
        let l = try PeerLink.start(c) { r.record($0) }
        links.append(l)
        return l
    }

    func testTwoLinksAuthenticateAndExchangeEveryMessageTypeBothWaysInOrder() throws {
        let ra = Recorder(), rb = Recorder()
        let a = try start(fastConfig(testIdentity(node: 1, expectedPeer: 2)), ra)
        let b = try start(fastConfig(testIdentity(node: 2, expectedPeer: 1), peerPort: a.listeningPort!), rb)
        XCTAssertTrue(ra.wait { _ in !ra.connected.isEmpty }); XCTAssertTrue(rb.wait { _ in !rb.connected.isEmpty })
        XCTAssertEqual(ra.connected[0].0, rb.connected[0].0, "both ends of a connection see the same epoch")
        XCTAssertEqual(ra.connected[0].1.peerNode, NodeID(2)); XCTAssertEqual(rb.connected[0].1.peerNode, NodeID(1))
        XCTAssertEqual(rb.connected[0].1.role, .dialer)

        let fromA = Gen.oneOfEach(seed: 21), fromB = Gen.oneOfEach(seed: 22)
        for m in fromA { XCTAssertTrue(a.send(m)) }
        for m in fromB { XCTAssertTrue(b.send(m)) }
        XCTAssertTrue(rb.wait { _ in rb.messages.count >= fromA.count }); XCTAssertTrue(ra.wait { _ in ra.messages.count >= fromB.count })
        XCTAssertEqual(rb.messages, fromA); XCTAssertEqual(ra.messages, fromB)

        // Heartbeats measure a round trip on both sides.
        XCTAssertTrue(ra.wait(seconds: 5) { _ in a.status.lastRTTMicroseconds != nil && b.status.lastRTTMicroseconds != nil })
        XCTAssertTrue(a.status.connected); XCTAssertEqual(a.status.peer?.peerName, "node2")
        XCTAssertTrue(ra.rejected.isEmpty && rb.rejected.isEmpty && ra.disconnected.isEmpty)
    }

    /// A peer that fails a check is refused on both sides with the reason, and nothing is delivered to either.
    func assertRefused(listener: LinkIdentity, dialer: LinkIdentity, code: Refusal.Code, file: StaticString = #filePath, line: UInt = #line) throws {
        let ra = Recorder(), rb = Recorder()
        let a = try start(fastConfig(listener), ra)
        let b = try start(fastConfig(dialer, peerPort: a.listeningPort!), rb)
        XCTAssertTrue(ra.wait { _ in !ra.rejected.isEmpty }, "listener side", file: file, line: line)
        XCTAssertTrue(rb.wait { _ in !rb.rejected.isEmpty }, "dialer side", file: file, line: line)
        XCTAssertEqual(ra.rejected[0].refusal?.code, code, "\(ra.rejected[0])", file: file, line: line)
        XCTAssertEqual(rb.rejected[0].refusal?.code, code, "\(rb.rejected[0])", file: file, line: line)
        XCTAssertFalse(b.send(.release(Release(locations: [.inode(1)]))), file: file, line: line)
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertTrue(ra.connected.isEmpty && rb.connected.isEmpty && ra.messages.isEmpty && rb.messages.isEmpty, file: file, line: line)
        print("refused (\(code)): listener logs \"\(ra.rejected[0])\"; dialer logs \"\(rb.rejected[0])\"")
    }

    func testWrongSecretIsRefusedOnBothSides() throws {
        try assertRefused(listener: testIdentity(node: 1), dialer: testIdentity(node: 2, secret: "not the right secret at all"),
                          code: .authenticationFailed)
    }

    func testWrongVolumeIsRefusedOnBothSides() throws {
        try assertRefused(listener: testIdentity(node: 1), dialer: testIdentity(node: 2, volume: "another-volume"), code: .volumeMismatch)
    }

    func testDuplicateNodeIDIsRefusedOnBothSides() throws {
        try assertRefused(listener: testIdentity(node: 1), dialer: testIdentity(node: 1), code: .duplicateNodeID)
    }

    func testGarbageOnThePortIsRefusedWithAReasonAndClosed() throws {
        let ra = Recorder()
        let a = try start(fastConfig(testIdentity(node: 1)), ra)
        var r = SeededRandom(seed: 99)
        let inputs: [[UInt8]] = [Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), r.bytes(3000), [0, 0, 0, 5, 0x11, 1, 2, 3, 4]]
        for (i, input) in inputs.enumerated() {
            let (received, closed) = rawExchange(port: a.listeningPort!, send: input)
            XCTAssertTrue(closed, "the link closes a garbage connection")
            // What the stranger got: the link's hello, then a refusal saying why.
            var asm = FrameAssembler(maxFrameBytes: FrameLimits.handshakeMaxFrameBytes)
            asm.append(received)
            let hello = try XCTUnwrap(try asm.next())
            XCTAssertEqual(hello.type, FrameType.linkHello.rawValue)
            let refuse = try XCTUnwrap(try asm.next())
            XCTAssertEqual(refuse.type, FrameType.refuse.rawValue)
            XCTAssertEqual(try Refusal.decode(refuse.body).code, .badHandshake)
            XCTAssertTrue(ra.wait { _ in ra.rejected.count > i })
        }
        XCTAssertTrue(ra.rejected.allSatisfy { $0.refusal?.code == .badHandshake }, "\(ra.rejected)")
        XCTAssertTrue(ra.connected.isEmpty && ra.messages.isEmpty)
    }

    func testTheLinkReconnectsAfterThePeerRestartsWithANewEpoch() throws {
        let ra = Recorder(), rb = Recorder()
        let a = try start(fastConfig(testIdentity(node: 1)), ra)
        let port = a.listeningPort!
        let b = try start(fastConfig(testIdentity(node: 2), peerPort: port), rb)
        XCTAssertTrue(rb.wait { _ in rb.connected.count == 1 })
        let first = rb.connected[0].0

        a.stop()
        XCTAssertTrue(rb.wait { _ in rb.disconnected.count == 1 })
        XCTAssertEqual(rb.disconnected[0].0, first)
        XCTAssertEqual(rb.disconnected[0].1.refusal?.code, .goingAway, "the stopping node says goodbye: \(rb.disconnected[0].1)")
        Thread.sleep(forTimeInterval: 0.3)   // B keeps dialing a closed port meanwhile

        let ra2 = Recorder()
        let a2 = try start(fastConfig(testIdentity(node: 1), listenPort: port), ra2)
        XCTAssertTrue(rb.wait { _ in rb.connected.count == 2 })
        let second = rb.connected[1].0
        XCTAssertGreaterThan(second, first)
        XCTAssertTrue(ra2.wait { _ in ra2.connected.count == 1 })
        XCTAssertEqual(ra2.connected[0].0, second, "the restarted node adopts the larger epoch")
        let m = Message.ack(Receipt(location: .track(1, 1), version: Version(counter: 9, node: NodeID(2)), durable: true))
        XCTAssertTrue(b.send(m))
        XCTAssertTrue(ra2.wait { _ in ra2.messages == [m] })
        _ = a2
    }

    func testDroppedConnectionIsReestablishedByTheDialer() throws {
        let ra = Recorder(), rb = Recorder()
        let a = try start(fastConfig(testIdentity(node: 1)), ra)
        _ = try start(fastConfig(testIdentity(node: 2), peerPort: a.listeningPort!), rb)
        XCTAssertTrue(ra.wait { _ in ra.connected.count == 1 })
        a.dropConnection()
        XCTAssertTrue(ra.wait { _ in ra.connected.count == 2 })
        XCTAssertTrue(rb.wait { _ in rb.connected.count == 2 })
        XCTAssertEqual(ra.disconnected.count, 1)
        XCTAssertGreaterThan(ra.connected[1].0, ra.connected[0].0)
    }

    func testBothNodesDialingAtOnceEndWithOneConnectionBothAgreeOn() throws {
        for round in 0..<3 {
            let ra = Recorder(), rb = Recorder()
            let a = try start(fastConfig(testIdentity(node: 1)), ra)
            let b = try start(fastConfig(testIdentity(node: 2)), rb)
            a.setPeer(host: "127.0.0.1", port: b.listeningPort!)
            b.setPeer(host: "127.0.0.1", port: a.listeningPort!)
            XCTAssertTrue(ra.wait { _ in !ra.connected.isEmpty }); XCTAssertTrue(rb.wait { _ in !rb.connected.isEmpty })
            Thread.sleep(forTimeInterval: 0.5)   // let any duplicate resolve
            XCTAssertTrue(a.status.connected && b.status.connected, "round \(round)")
            // Epochs may differ by one here: a side that made the losing connection current first used up an epoch.
            XCTAssertEqual(a.status.peer?.dialer, b.status.peer?.dialer, "both kept the same connection, round \(round)")
            // Exactly one more connected than disconnected on each side: one current connection.
            XCTAssertEqual(ra.connected.count, ra.disconnected.count + 1); XCTAssertEqual(rb.connected.count, rb.disconnected.count + 1)
            let m = Message.release(Release(locations: [.inode(UInt64(round))]))
            XCTAssertTrue(a.send(m)); XCTAssertTrue(rb.wait { _ in rb.messages.contains(m) })
            a.stop(); b.stop()
        }
    }

    func testAFullOutboxRefusesSendsThenReportsWritableAndLosesNothingQueued() throws {
        let ra = Recorder(), rb = Recorder()
        var ca = fastConfig(testIdentity(node: 1))
        ca.maxQueuedBytes = 2 << 20
        ca.maxQueuedFrames = 64
        let a = try start(ca, ra)
        _ = try start(fastConfig(testIdentity(node: 2), peerPort: a.listeningPort!), rb)
        XCTAssertTrue(ra.wait { _ in !ra.connected.isEmpty })
        var r = SeededRandom(seed: 3)
        let data = Payload(r.bytes(256 * 1024))
        var queued = 0, full = 0, maxQueued = 0
        for i in 0..<400 {
            let m = Message.push(Push(location: .track(1, UInt64(i)), payload: data, version: .zero, durable: false))
            switch a.trySend(m) {
            case .queued: queued += 1
            case .queueFull: full += 1
            default: XCTFail("unexpected")
            }
            maxQueued = max(maxQueued, a.status.queuedBytes)
        }
        XCTAssertGreaterThan(full, 0, "the producer outran the socket and was told so")
        XCTAssertLessThanOrEqual(maxQueued, 2 << 20)
        XCTAssertTrue(ra.wait { evs in evs.contains { if case .writable = $0 { return true }; return false } })
        XCTAssertTrue(rb.wait(seconds: 30) { _ in rb.messages.count == queued })
        let slots = rb.messages.map { m -> UInt64 in if case let .push(p) = m { return p.location.slot }; return 0 }
        XCTAssertEqual(slots, slots.sorted(), "in order")
        print("backpressure: \(queued) pushes of 256 KiB queued, \(full) refused as full; max queued \(maxQueued) bytes")
    }

    func testLoopbackThroughput() throws {
        let ra = Recorder(), rb = Recorder()
        let a = try start(fastConfig(testIdentity(node: 1)), ra)
        _ = try start(fastConfig(testIdentity(node: 2), peerPort: a.listeningPort!), rb)
        XCTAssertTrue(ra.wait { _ in !ra.connected.isEmpty })

        func pump(_ messages: [Message]) -> Double {
            let before = rb.messageCount
            let t0 = DispatchTime.now().uptimeNanoseconds
            var i = 0
            while i < messages.count {
                switch a.trySend(messages[i]) {
                case .queued: i += 1
                case .queueFull: ra.wait(seconds: 0.005) { _ in false }
                default: XCTFail("not connected"); return 0
                }
            }
            while rb.messageCount < before + messages.count && DispatchTime.now().uptimeNanoseconds - t0 < 60_000_000_000 { usleep(1000) }
            XCTAssertEqual(rb.messageCount, before + messages.count)
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        let acks = (0..<20_000).map { Message.ack(Receipt(location: .track(7, UInt64($0)), version: .zero, durable: false)) }
        let s1 = pump(acks)
        var r = SeededRandom(seed: 8)
        let data = Payload(r.bytes(64 * 1024))
        let pushes = (0..<1_000).map { Message.push(Push(location: .track(8, UInt64($0)), payload: data, version: .zero, durable: false)) }
        let s2 = pump(pushes)
        print("loopback: \(Int(Double(acks.count) / s1)) acks/s; 64 KiB pushes: \(Int(Double(pushes.count * 65536) / s2 / 1e6)) MB/s")
    }

    func testAMissingOrShortSecretStopsTheLinkFromStarting() throws {
        XCTAssertThrowsError(try PeerLinkConfig.readSecret(path: "/nonexistent/twinfs-secret")) {
            XCTAssertTrue("\($0)".contains("cannot read the secret file"), "\($0)")
        }
        let path = NSTemporaryDirectory() + "/peerlink-short-secret-\(getpid())"
        try Data("short".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try PeerLinkConfig.readSecret(path: path)) { XCTAssertTrue("\($0)".contains("5 bytes"), "\($0)") }
        let weak = LinkIdentity(volumeID: "v", node: NodeID(1), nodeName: "a", secret: [])
        XCTAssertThrowsError(try PeerLink.start(fastConfig(weak)) { _ in }) { XCTAssertTrue("\($0)".contains("secret"), "\($0)") }
    }

    func testBackoffDoublesUpToItsCapWithBoundedJitter() {
        var b = Backoff(initialMs: 100, maxMs: 5_000)
        let mid: UInt16 = 32768
        XCTAssertEqual((0..<8).map { _ in b.next(random16: mid) }, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000])
        b.reset()
        XCTAssertEqual(b.next(random16: 0), 80); XCTAssertEqual(b.next(random16: .max), 239)
    }
}
