// MirrorRuntime: wires a paired store's mirror together in the daemon: the protocol shell (TwinNode), the
// peer link (PeerLink, TCP), the kernel invalidations (TwinFUSE) and the status socket.
// Owns: start-up order and the status document. Never: protocol decisions (MirrorCore) or link framing.
import Foundation
import Glibc
import MirrorCore
import PeerLink
import Synchronization
import TwinFUSE
import TwinNode
import TwinStore

final class MirrorRuntime: @unchecked Sendable {
    static let secretFileName = "secret"

    let shell: MirrorShell
    let store: Store
    let storePath: String
    private(set) var link: PeerLink?
    private var control: ControlServer?
    private let linkLock = NSLock()
    private var lastRejection: String?
    private var lastDisconnect: String?

    /// Opens the mirror's durable state and creates the shell; nothing talks to the peer yet.
    init(store: Store, volume: Volume, storePath: String, peerTimeoutMs: Int, fsyncMirror: Bool) throws {
        self.store = store
        self.storePath = storePath
        let identity = store.identity
        guard identity.nodeIndex == 1 || identity.nodeIndex == 2 else {
            throw UsageError(message: "store \(storePath) is paired but its node index is \(identity.nodeIndex), not 1 or 2")
        }
        let me = NodeID(UInt8(identity.nodeIndex))
        let peer = NodeID(3 - me.raw)
        let saved = try store.loadMirrorState()
        let incarnation = try store.nextMirrorIncarnation()
        var entries: [PersistEntry] = []
        for row in saved.rows {
            guard let state = PersistedState(rawValue: row.state) else {
                throw StoreError.corrupt(path: storePath, detail: "mirror state \(row.state) of inode \(row.ino) is unknown")
            }
            entries.append(PersistEntry(Location(ino: row.ino, slot: row.slot), state))
        }
        let promotion = try store.promotionRecord()
        let recovered = RecoveredState(
            entries: entries, clockReservation: saved.clockReservation, incarnation: incarnation, joining: saved.joining,
            sole: promotion.sole, adopting: promotion.adopting)
        joining = saved.joining
        claim = PromotionClaim(promotion: promotion.promotion, peerPromotionSeen: promotion.peerPromotionSeen, sole: promotion.sole)
        splitBrain = promotion.splitBrainPeer != nil
        store.database.releaseStatements()
        // Marks as long as the prediction's largest window; tokens released after 10 s unused (ticks are ms),
        // so a writer slower than its window (a long sequential window, a create burst across many directories)
        // does not see its tokens go back before it reaches them; 128 pushes (8 MiB) in flight, so a sync of the
        // peer's store taking longer than a round trip does not leave the link idle (Docs/PERFORMANCE.md, "Two nodes").
        let config = MirrorConfig(node: me, peer: peer, peerTimeoutTicks: Tick(peerTimeoutMs),
                                  maxInFlightPushes: 128,
                                  maxMarkItems: FilesystemPrediction.maxMarkItems,
                                  release: ReleasePolicy(coldAfterTicks: 10_000))
        volume.fsyncMirror = fsyncMirror
        let box = LinkBox()
        shell = MirrorShell(volume: volume, config: config, prediction: FilesystemPrediction(), recovered: recovered) { message, epoch in
            box.send(message, epoch: epoch)
        }
        shell.log = { line in Self.log(line) }
        self.box = box
        verification = Verification(shell: shell)
    }

    private let box: LinkBox
    /// `twinfs verify` (Verification.swift).
    let verification: Verification
    /// The store is joining (its copy may lack anything the peer has): the filler walks the tree.
    private var joining: Bool
    private var filler: Filler?
    /// What this node says about promotions at each handshake (guarded by `linkLock`).
    private var claim: PromotionClaim
    /// The last connection was refused because both nodes were promoted (guarded by `linkLock`).
    private var splitBrain: Bool
    /// The verdict last logged, so a refusal repeated by every reconnection is logged once.
    private var lastVerdict: PromotionVerdict?
    /// The epoch the core was told is up (0: none): messages and a disconnect of other connections are not its.
    private var coreEpoch: UInt64 = 0
    private var demoting = false
    /// Where a demotion keeps this node's unreplicated changes until they are imported into /.twinfs/conflicts.
    var pendingConflictsPath: String { storePath + "/conflicts-pending" }
    /// How long a clean stop waits for the peer to take this node's tokens and data.
    static let leaveTimeoutMs: UInt64 = 10_000

    /// The way to the peer, with a backlog: the core counts on delivery, in order, while a connection lasts, so a
    /// full outbox holds messages here until the link says it is writable again. Beyond `maxBacklogBytes` (or a
    /// message too large for a frame) the connection is ended instead; the core re-sends after the handshake.
    final class LinkBox: @unchecked Sendable {
        static let maxBacklogBytes = 256 << 20
        var link: PeerLink?
        private let lock = NSLock()
        private var backlog: [Message] = []
        private var backlogBytes = 0

        private var backlogEpoch: UInt64 = 0

        func send(_ message: Message, epoch: UInt64) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            guard let link, epoch != 0 else { return false }
            if !backlog.isEmpty {
                guard epoch == backlogEpoch else { return false }
                return hold(message, link)
            }
            switch link.trySend(message, epoch: epoch) {
            case .queued: return true
            case .notConnected: return false
            case .queueFull:
                backlogEpoch = epoch
                return hold(message, link)
            case .tooLarge:
                MirrorRuntime.log("a message does not fit in a frame; reconnecting")
                link.dropConnection()
                return false
            }
        }

        private func hold(_ message: Message, _ link: PeerLink) -> Bool {
            let bytes = Self.size(message)
            guard backlogBytes + bytes <= Self.maxBacklogBytes else {
                MirrorRuntime.log("the link to the peer is \(backlogBytes >> 20) MiB behind; reconnecting")
                backlog.removeAll()
                backlogBytes = 0
                link.dropConnection()
                return false
            }
            backlog.append(message)
            backlogBytes += bytes
            return true
        }

        /// The link drained: send what waited, in order, until it is full again.
        func writable() {
            lock.lock()
            defer { lock.unlock() }
            guard let link else { return }
            var sent = 0
            while sent < backlog.count {
                let r = link.trySend(backlog[sent], epoch: backlogEpoch)
                if r == .queueFull { break }
                if r != .queued {
                    // The connection is gone: everything pending goes again after the next handshake.
                    sent = backlog.count
                    break
                }
                sent += 1
            }
            for m in backlog[0..<sent] { backlogBytes -= Self.size(m) }
            backlog.removeFirst(sent)
        }

        /// A new connection: the previous one's backlog is void (the core re-sends what matters).
        func reset() {
            lock.lock()
            backlog.removeAll()
            backlogBytes = 0
            lock.unlock()
        }

        static func size(_ m: Message) -> Int {
            switch m {
            case .push(let p): return p.payload.bytes.count + 64
            case .pullAnswer(let a):
                if case .data(let payload, _) = a.content { return payload.bytes.count + 64 }
                return 64
            case .markReply(let r): return 64 + r.granted.reduce(0) { $0 + 32 + ($1.data?.bytes.count ?? 0) } + 16 * r.refused.count
            case .mark(let k): return 64 + 24 * k.items.count
            default: return 64
            }
        }
    }

    static func log(_ line: String) {
        writeStderr("twinfs: \(line)\n")
    }

    /// Starts the executor (before the mount, so no request runs unmirrored).
    func startShell() {
        shell.start()
    }

    /// Connects the kernel notifications, the peer link and the status socket (after the mount).
    func connect(session: FuseSession) throws {
        shell.invalidate = { ino in session.invalidateAttributes(ino) }
        let identity = store.identity
        guard let pairing = identity.pairing else { return }
        let secret: [UInt8]
        do {
            secret = try PeerLinkConfig.readSecret(path: storePath + "/" + Self.secretFileName)
        } catch {
            throw UsageError(message: "\(error)")
        }
        let me = NodeID(UInt8(identity.nodeIndex))
        let listen = pairing.listenEndpoint
        let peer = pairing.peerEndpoint
        var config = PeerLinkConfig(
            identity: LinkIdentity(
                volumeID: identity.volumeID, node: me, nodeName: identity.nodeName, expectedPeer: NodeID(3 - me.raw), secret: secret),
            listenHost: listen.host, listenPort: listen.port, peerHost: peer.host, peerPort: peer.port)
        config.backoffMaxMs = 2_000
        config.promotionClaim = { [weak self] in self?.currentClaim() ?? .none }
        let shell = self.shell
        do {
            link = try PeerLink.start(config) { [weak self] event in
                switch event {
                case .connected(let epoch, let info):
                    guard let self else { return }
                    self.box.reset()
                    guard self.admit(info) else {
                        self.link?.dropConnection()
                        return
                    }
                    Self.log("peer \(info.peerName) (node \(info.peerNode.raw)) connected, epoch \(epoch)")
                    self.linkLock.withLock { self.coreEpoch = epoch }
                    shell.post(.connectionUp(epoch: epoch))
                case .message(let message):
                    guard let self, self.linkLock.withLock({ self.coreEpoch != 0 }) else { return }
                    shell.post(.received(message))
                case .disconnected(_, let reason):
                    guard let self else { return }
                    self.box.reset()
                    let wasUp = self.linkLock.withLock {
                        defer { self.coreEpoch = 0 }
                        return self.coreEpoch != 0
                    }
                    guard wasUp else { return }
                    Self.log("peer disconnected: \(reason)")
                    self.note(disconnect: "\(reason)")
                    shell.post(.connectionDown)
                case .rejected(let reason, let remote):
                    Self.log("connection with \(remote) refused: \(reason)")
                    self?.note(rejection: "\(remote): \(reason)")
                case .writable:
                    self?.box.writable()
                case .verify(let epoch, let message):
                    self?.verification.received(message, epoch: epoch)
                }
            }
        } catch {
            throw UsageError(message: "cannot listen on \(pairing.listen): \(error)")
        }
        box.link = link
        verification.attach(link)
        verification.verifier.invalidateData = { ino in session.invalidateData(ino) }
        if joining { startFiller() }
        // A demotion that crashed before its kept changes were imported finishes the import now.
        importConflictsWhenConnected()
        control = try ControlServer(storePath: storePath) { [weak self] request in
            guard let self else { return [] }
            return self.handle(request: request)
        }
        control?.start()
    }

    private func startFiller() {
        let shell = self.shell
        let filler = Filler(volume: shell.volume)
        filler.start {
            Self.log("joined: this store has pulled every location it lacked (\(filler.progress.files) files)")
            shell.post(.joinCompleted)
        }
        self.filler = filler
    }

    // MARK: promotion (Docs/OPERATIONS.md "Losing a node")

    private func currentClaim() -> PromotionClaim { linkLock.withLock { claim } }

    /// Judges an authenticated connection by both promotion claims (the peer judges it the same way) before the
    /// core hears of it; false: the connection is refused (nothing was sent on it).
    private func admit(_ info: SessionInfo) -> Bool {
        let mine = currentClaim()
        let verdict = PromotionRule.verdict(
            mine: PromotionView(promotion: mine.promotion, peerPromotionSeen: mine.peerPromotionSeen, sole: mine.sole),
            peer: PromotionView(promotion: info.peerPromotion.promotion, peerPromotionSeen: info.peerPromotion.peerPromotionSeen,
                                sole: info.peerPromotion.sole))
        let repeated = linkLock.withLock {
            defer { lastVerdict = verdict }
            return lastVerdict == verdict
        }
        switch verdict {
        case .proceed:
            linkLock.withLock {
                splitBrain = false
                // The core ends a sole period at this connection (the peer gave way).
                claim.sole = false
            }
            return true
        case .awaitPeerDemotion:
            if !repeated { Self.log("peer \(info.peerName) returned after this node was promoted: waiting for it to give way (it keeps its own changes under /.twinfs/conflicts)") }
            note(rejection: "peer \(info.peerName) has not given way to this node's promotion yet")
            return false
        case .splitBrain:
            let message = PromotionRule.splitBrainMessage(peerName: info.peerName)
            if !repeated { Self.log(message) }
            note(rejection: message)
            linkLock.withLock { splitBrain = true }
            let peer = Store.SplitBrainClaim(promotion: info.peerPromotion.promotion, peerPromotionSeen: info.peerPromotion.peerPromotionSeen)
            do { try shell.volume.withStore { try $0.recordSplitBrain(peer: peer) } } catch { Self.log("cannot record the split brain: \(error)") }
            return false
        case .demote(let peerPromotion):
            let start = linkLock.withLock {
                defer { demoting = true }
                return !demoting
            }
            if start {
                Self.log("peer \(info.peerName) was promoted while this node was away: giving way (this node's unreplicated changes are kept under /.twinfs/conflicts)")
                spawnDetachedThread { self.demote(peerPromotion: peerPromotion, peerName: info.peerName) }
            }
            return false
        }
    }

    /// Gives way to the promoted peer: keeps this node's unreplicated changes aside, forgets its mirror state,
    /// and rejoins adopting the peer's copy; the next connection then goes ahead.
    private func demote(peerPromotion: UInt64, peerName: String) {
        filler?.stop()
        filler = nil
        let volume = shell.volume
        let pending = pendingConflictsPath
        let nodeName = store.identity.nodeName
        var kept = 0
        do {
            try shell.demote {
                try volume.withStore { store in
                    let saved = try store.loadMirrorState()
                    // Inode numbers reserved ahead for creates that never came have neither a record nor a tombstone.
                    let superset = try Set(saved.rows.compactMap { row -> UInt64? in
                        let state = PersistedState(rawValue: row.state)
                        return state == .held || state == .contested ? row.ino : nil
                    }).filter { try store.storedVersion(.inode($0)) > 0 }
                    let records = try Conflicts.preserve(
                        store: store, inodes: superset.sorted(), nodeName: nodeName, nowUnixMs: Self.unixMs(),
                        pendingDirectory: pending)
                    kept = records.count
                    try store.recordDemotion(peerPromotion: peerPromotion)
                    let incarnation = try store.nextMirrorIncarnation()
                    return RecoveredState(entries: [], clockReservation: saved.clockReservation, incarnation: incarnation,
                                          joining: true, adopting: true)
                }
            }
        } catch {
            Self.log("giving way to \(peerName) failed: \(error); retrying at the next connection")
            linkLock.withLock { demoting = false }
            return
        }
        linkLock.withLock {
            claim.peerPromotionSeen = peerPromotion
            claim.sole = false
            demoting = false
        }
        joining = true
        startFiller()
        Self.log("gave way to \(peerName): \(kept) changed files of this node kept for /.twinfs/conflicts; rejoining")
        importConflictsWhenConnected()
    }

    /// Imports the kept changes into the tree (mirrored like any file) once the peer is there; retried until done.
    func importConflictsWhenConnected() {
        let pending = pendingConflictsPath
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: pending), !names.isEmpty else { return }
        let volume = shell.volume
        spawnDetachedThread { [weak self] in
            for _ in 0..<Self.maxConflictImportAttempts {
                guard let self, !self.stopped.load(ordering: .acquiring) else { return }
                if self.shell.status.core.connected {
                    do {
                        let records = try Conflicts.importPending(volume: volume, pendingDirectory: pending)
                        Self.log("kept \(records.count) changes of this node under /.twinfs/conflicts")
                        return
                    } catch {
                        Self.log("importing kept changes into /.twinfs/conflicts failed (retrying): \(error)")
                    }
                }
                usleep(1_000_000)
            }
        }
    }

    static let maxConflictImportAttempts = 3_600
    static let maxListedConflicts = 100
    /// Set by `stop` (the signal-handling thread), read by the conflict importer's thread.
    private let stopped = Atomic<Bool>(false)

    static func unixMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// `twinfs promote` on a running daemon.
    private func promote() -> [String: Any] {
        var record: Store.PromotionRecord?
        do {
            let losses = try shell.promote {
                record = try shell.volume.withStore { try $0.recordPromotion() }
            }
            if let record {
                linkLock.withLock {
                    claim = PromotionClaim(promotion: record.promotion, peerPromotionSeen: record.peerPromotionSeen, sole: true)
                    splitBrain = false
                }
            }
            let inodes = Array(Set(losses.locations.map(\.ino))).sorted()
            let lost = PromoteCommand.describe(inodes: inodes, volume: shell.volume)
            Self.log("promoted by the operator: serving every location alone; \(lost.paths.count) files may have lost changes made on the peer")
            return [
                "promoted": true, "promotion": Int(record?.promotion ?? 0), "lost": lost.paths, "lostUnseenInodes": lost.unseen,
                "lostTruncated": losses.truncated, "joiningIncomplete": losses.joiningIncomplete,
            ]
        } catch {
            return ["error": "\(error)"]
        }
    }

    /// `twinfs resolve --keep` on a running daemon.
    private func resolve(keepThisNode: Bool) -> [String: Any] {
        do {
            try shell.volume.withStore { try $0.resolveSplitBrain(keepThisNode: keepThisNode) }
            let record = try shell.volume.withStore { try $0.promotionRecord() }
            linkLock.withLock {
                claim = PromotionClaim(promotion: record.promotion, peerPromotionSeen: record.peerPromotionSeen, sole: claim.sole && keepThisNode)
                splitBrain = false
                lastVerdict = nil
            }
            Self.log(keepThisNode ? "split brain resolved: this node's data win" : "split brain resolved: the peer's data win; this node gives way at the next connection")
            return ["resolved": true, "keep": keepThisNode ? "this" : "peer"]
        } catch {
            return ["error": "\(error)"]
        }
    }

    private func handle(request: String) -> [UInt8] {
        let answer: [String: Any]
        switch request {
        case "", "status": return statusDocument()
        case "promote": answer = promote()
        case "resolve keep-this": answer = resolve(keepThisNode: true)
        case "resolve keep-peer": answer = resolve(keepThisNode: false)
        case let r where r.hasPrefix("verify"): answer = verification.request(r, connected: shell.status.core.connected)
        default: answer = ["error": "unknown request \(request.debugDescription)"]
        }
        return Array((try? JSONSerialization.data(withJSONObject: answer, options: [.sortedKeys])) ?? Data())
    }

    private func note(rejection: String? = nil, disconnect: String? = nil) {
        linkLock.lock()
        if let rejection { lastRejection = rejection }
        if let disconnect { lastDisconnect = disconnect }
        linkLock.unlock()
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        filler?.stop()
        if link?.status.connected == true {
            if shell.leave(timeoutMs: Self.leaveTimeoutMs) {
                Self.log("left cleanly: the peer holds every token and all data of this node")
            } else {
                Self.log("stopping with tokens or data not handed over (the peer will wait for this node for those)")
            }
        }
        control?.stop()
        link?.stop()
        shell.stop()
    }

    /// The live part of `twinfs status --json` (documented in Docs/OPERATIONS.md; field names are stable).
    func statusDocument() -> [UInt8] {
        let s = shell.status
        let linkStatus = link?.status
        linkLock.lock()
        let rejection = lastRejection
        let disconnect = lastDisconnect
        linkLock.unlock()
        let c = s.core.counters
        let trackBytes = store.identity.trackBytes
        var peer: [String: Any] = [
            "address": store.identity.pairing?.peer ?? "",
            "connected": linkStatus?.connected ?? false,
            "connections": linkStatus?.connections ?? 0,
            "rejections": linkStatus?.rejections ?? 0,
        ]
        if let info = linkStatus?.peer, linkStatus?.connected == true { peer["name"] = info.peerName; peer["node"] = Int(info.peerNode.raw) }
        if let rtt = linkStatus?.smoothedRTTMicroseconds { peer["rttMs"] = Double(rtt) / 1000 }
        if let since = s.connectedSinceMs, linkStatus?.connected == true { peer["connectedForMs"] = s.uptimeMs - min(since, s.uptimeMs) }
        if let rejection { peer["lastRejection"] = rejection }
        if let disconnect { peer["lastDisconnect"] = disconnect }
        peer.merge(PartitionStatusKeys.peer(
            s, connected: linkStatus?.connected ?? false, bytesSent: linkStatus?.bytesSent ?? 0,
            bytesReceived: linkStatus?.bytesReceived ?? 0, lastDialError: linkStatus?.lastDialError,
            lastDisconnect: disconnect)) { $1 }
        var mirror: [String: Any] = [
            "oos": s.core.oosCount, "moos": s.core.moosCount, "mos": s.core.mosCount,
            "oosBytesUpperBound": s.core.oosCount * trackBytes,
            "moosBytesUpperBound": s.core.moosCount * trackBytes,
            "mosBytesUpperBound": s.core.mosCount * trackBytes,
            "oldestOOSAgeMs": s.core.oosCount == 0 ? 0 : Int(s.core.oldestOOSAgeTicks),
            "activeOperations": s.core.activeOperations, "inFlightPushes": s.core.inFlightPushes,
            "pendingFlushes": s.core.pendingFlushes,
            "counters": [
                "marksSent": c.marksSent, "locationsMarked": c.locationsMarked, "locationsPredicted": c.locationsPredicted,
                "marksReceived": c.marksReceived, "marksRefused": c.marksRefused, "pullsSent": c.pullsSent,
                "pullAnswersData": c.pullAnswersData, "pullAnswersInSync": c.pullAnswersInSync,
                "prefetchesSent": c.prefetchesSent, "pushesSent": c.pushesSent, "acksReceived": c.acksReceived,
                "releasesSent": c.releasesSent, "releasesReceived": c.releasesReceived,
                "operationsGranted": c.operationsGranted, "operationsWithRoundTrip": c.operationsWithRoundTrip,
                "roundTrips": c.roundTrips, "operationsFailed": c.operationsFailed, "handshakes": c.handshakes,
                "bytesPushed": Int(s.bytesPushed), "bytesReceived": Int(s.bytesReceived),
                "persistBatches": s.persistBatches, "metadataSyncs": s.metadataSyncs,
            ] as [String: Any],
            "rates": s.rates,
            "errors": ["store": s.storeErrors, "droppedSends": s.droppedSends, "unstampedWrites": s.unstampedWrites] as [String: Any],
            "lastError": s.lastError ?? "",
        ]
        mirror.merge(PartitionStatusKeys.mirror(s)) { $1 }
        var join: [String: Any] = ["active": s.core.joining]
        if let p = filler?.progress {
            join["directories"] = p.directories
            join["files"] = p.files
            join["bytes"] = Int(p.bytes)
            join["retries"] = p.retries
            join["walkDone"] = p.done
        }
        let claim = currentClaim()
        let promotion: [String: Any] = [
            "count": Int(claim.promotion), "peerSeen": Int(claim.peerPromotionSeen), "sole": s.core.sole,
            "adopting": s.core.adopting, "splitBrain": linkLock.withLock { splitBrain },
        ]
        var doc: [String: Any] = [
            "mounted": true, "uptimeMs": Int(s.uptimeMs), "peer": peer, "mirror": mirror, "joining": join,
            "leaving": s.core.leaving, "promotion": promotion, "verify": verification.statusKeys(),
        ]
        // The kept copies are read through the mirror: only while that cannot wait for an absent peer.
        if s.core.connected || s.core.sole, let records = try? Conflicts.list(volume: shell.volume, limit: Self.maxListedConflicts) {
            doc["conflicts"] = records.map {
                ["path": $0.path, "kind": $0.kind, "node": $0.node, "timeUnixMs": Int($0.timeUnixMs), "bytes": Int($0.bytes),
                 "conflictPath": $0.conflictPath] as [String: Any]
            }
        }
        return Array((try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])) ?? Data())
    }
}
