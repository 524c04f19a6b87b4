// Verification: the daemon's side of `twinfs verify`: carries the verifier's questions and answers over the peer
// link (the link-level verify frames, Docs/PROTOCOL.md "Transport"), answers the peer's questions off the link's
// event loop, and answers the control requests `verify`, `verify repair` and `verify report`.
// Never: compare anything itself (TwinNode's Verifier does), or block the link's event loop.
import Dispatch
import Foundation
import Glibc
import MirrorCore
import PeerLink
import TwinNode
import TwinStore

/// The daemon's side of verify: the verifier, its questions to the peer over the link, and the answers to the peer's.
final class Verification: VerifyPeer, @unchecked Sendable {
    let verifier: Verifier
    private let lock = NSLock()
    private var link: PeerLink?
    private var nextID: UInt64 = 1
    private var waiting: [UInt64: Waiting] = [:]
    /// Answers to the peer are computed here, off the link's event loop, in order.
    private let answers = DispatchQueue(label: "twinfs.verify.answers")
    static let answerTimeoutMs = 60_000
    static let sendRetries = 50

    private final class Waiting {
        let semaphore = DispatchSemaphore(value: 0)
        var answer: VerifyMessage?
    }

    init(shell: MirrorShell) {
        verifier = Verifier(shell: shell)
        verifier.log = { MirrorRuntime.log($0) }
    }

    func attach(_ link: PeerLink?) { lock.withLock { self.link = link } }

    /// A verify frame from the peer (on the link's event loop: nothing blocks here).
    func received(_ message: VerifyMessage, epoch: UInt64) {
        guard message.isRequest else {
            lock.withLock {
                if let w = waiting[message.id] {
                    w.answer = message
                    w.semaphore.signal()
                }
            }
            return
        }
        answers.async { [self] in
            let reply: VerifyMessage
            switch message {
            case let .check(id, locations):
                reply = .checked(id: id, entries: verifier.answerCheck(locations).map {
                    var flags: VerifyEntry.Flags = []
                    if $0.unsettled { flags.insert(.unsettled) }
                    if $0.sum == nil { flags.insert(.unreadable) }
                    if $0.recorded { flags.insert(.recorded) }
                    if $0.mismatchesRecorded { flags.insert(.mismatchesRecorded) }
                    return VerifyEntry(location: $0.location, version: $0.version, sum: $0.sum ?? [], flags: flags)
                })
            case let .fetch(id, location):
                let image = verifier.answerFetch(location)
                reply = .image(id: id, location: location, version: image?.version ?? 0, bytes: image?.bytes)
            case let .store(id, location, version, sameVersion, bytes):
                let r = verifier.answerStore(location, LocationImage(version: version, bytes: bytes), sameVersion: sameVersion)
                reply = .stored(id: id, applied: r.applied, detail: r.detail)
            default:
                return
            }
            _ = send(reply, epoch: epoch)
        }
    }

    private func send(_ message: VerifyMessage, epoch: UInt64?) -> SendResult {
        guard let link = lock.withLock({ self.link }) else { return .notConnected }
        var result = link.sendVerify(message, epoch: epoch)
        var tries = 0
        while result == .queueFull && tries < Self.sendRetries {
            usleep(100_000)
            tries += 1
            result = link.sendVerify(message, epoch: epoch)
        }
        return result
    }

    /// Sends a request and waits for its answer.
    private func ask(_ make: (UInt64) -> VerifyMessage) throws -> VerifyMessage {
        let w = Waiting()
        let id: UInt64 = lock.withLock {
            defer { nextID += 1 }
            waiting[nextID] = w
            return nextID
        }
        defer { lock.withLock { _ = waiting.removeValue(forKey: id) } }
        guard let link = lock.withLock({ self.link }), link.status.connected else { throw VerifyError.peer("the peer is not connected") }
        // Tied to this connection: an answer can only come on the connection the request went on.
        let epoch = link.status.epoch
        switch send(make(id), epoch: epoch) {
        case .queued: break
        case .notConnected: throw VerifyError.peer("the peer is not connected")
        case .queueFull: throw VerifyError.peer("the link to the peer stays full")
        case .tooLarge: throw VerifyError.peer("a verify message does not fit in a frame")
        }
        var waitedMs = 0
        while w.semaphore.wait(timeout: .now() + .milliseconds(Self.connectionCheckMs)) != .success {
            waitedMs += Self.connectionCheckMs
            let s = link.status
            if !s.connected || s.epoch != epoch { throw VerifyError.peer("the connection to the peer ended") }
            if waitedMs >= Self.answerTimeoutMs { throw VerifyError.peer("the peer did not answer within \(Self.answerTimeoutMs / 1000) s") }
        }
        guard let answer = lock.withLock({ w.answer }) else { throw VerifyError.peer("the peer's answer was lost") }
        return answer
    }

    static let connectionCheckMs = 250

    // MARK: VerifyPeer

    func check(_ locations: [Location]) throws -> [VerifyPeerEntry] {
        guard case let .checked(_, entries) = try ask({ .check(id: $0, locations: locations) }) else {
            throw VerifyError.badAnswer("the peer answered a check with something else")
        }
        return entries.map {
            VerifyPeerEntry(location: $0.location, version: $0.version, sum: $0.flags.contains(.unreadable) ? nil : $0.sum,
                            unsettled: $0.flags.contains(.unsettled), recorded: $0.flags.contains(.recorded),
                            mismatchesRecorded: $0.flags.contains(.mismatchesRecorded))
        }
    }

    func fetch(_ location: Location) throws -> LocationImage? {
        guard case let .image(_, _, version, bytes) = try ask({ .fetch(id: $0, location: location) }) else {
            throw VerifyError.badAnswer("the peer answered a fetch with something else")
        }
        return bytes.map { LocationImage(version: version, bytes: $0) }
    }

    func store(_ location: Location, _ image: LocationImage, sameVersion: Bool) throws -> (applied: Bool, detail: String) {
        guard case let .stored(_, applied, detail) = try ask({
            .store(id: $0, location: location, version: image.version, sameVersion: sameVersion, bytes: image.bytes)
        }) else {
            throw VerifyError.badAnswer("the peer answered a store with something else")
        }
        return (applied, detail)
    }

    // MARK: control requests and status

    /// `verify`, `verify repair`, `verify report`.
    func request(_ request: String, connected: Bool) -> [String: Any] {
        switch request {
        case "verify", "verify repair":
            guard connected else { return ["error": "the peer is not connected: verify compares with the peer's copy"] }
            let started = verifier.start(repair: request == "verify repair", peer: self)
            return ["started": started, "run": verifier.progress.runs]
        case "verify report":
            return report()
        default:
            return ["error": "unknown request \(request.debugDescription)"]
        }
    }

    func report() -> [String: Any] {
        let p = verifier.progress
        var doc = statusKeys(p)
        doc["finished"] = p.finished
        doc["repair"] = p.repair
        doc["elapsedMs"] = Int(p.elapsedMs)
        doc["reportTruncated"] = p.reportTruncated
        doc["report"] = p.report.map {
            [
                "kind": $0.kind.rawValue, "path": $0.path, "ino": Int($0.ino), "location": $0.location, "side": $0.side,
                "localVersion": Verifier.describe($0.localVersion), "peerVersion": Verifier.describe($0.peerVersion),
                "detail": $0.detail, "repaired": $0.repaired,
            ] as [String: Any]
        }
        return doc
    }

    /// `verify.*` of `twinfs status` (documented in Docs/OPERATIONS.md).
    func statusKeys(_ progress: VerifyProgress? = nil) -> [String: Any] {
        let p = progress ?? verifier.progress
        var keys: [String: Any] = [
            "active": p.active, "checked": p.checked, "total": p.total, "differences": p.differences, "repaired": p.repaired,
            "skippedInFlight": p.skippedInFlight, "rechecked": p.rechecked, "runs": p.runs, "corruptReads": verifier.corruptReads,
            "failedChecksumRecordings": verifier.failedChecksumRecordings,
        ]
        if let error = p.error { keys["error"] = error }
        return keys
    }
}
