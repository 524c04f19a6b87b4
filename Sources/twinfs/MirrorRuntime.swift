// MirrorRuntime: wires a paired store's mirror together in the daemon: the protocol shell (TwinNode), the
// peer link (PeerLink, TCP), the kernel invalidations (TwinFUSE) and the status socket.
// Owns: start-up order and the status document. Never: protocol decisions (MirrorCore) or link framing.
import Foundation
import Glibc
import MirrorCore
import PeerLink
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
        let recovered = RecoveredState(
            entries: entries, clockReservation: saved.clockReservation, incarnation: incarnation, joining: saved.joining)
        joining = saved.joining
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
    /// The store started joining (its copy may lack anything the peer has): the filler walks the tree.
    private let joining: Bool
    private var filler: Filler?
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
        let shell = self.shell
        do {
            link = try PeerLink.start(config) { [weak self] event in
                switch event {
                case .connected(let epoch, let info):
                    Self.log("peer \(info.peerName) (node \(info.peerNode.raw)) connected, epoch \(epoch)")
                    self?.box.reset()
                    shell.post(.connectionUp(epoch: epoch))
                case .message(let message):
                    shell.post(.received(message))
                case .disconnected(_, let reason):
                    Self.log("peer disconnected: \(reason)")
                    self?.box.reset()
                    self?.note(disconnect: "\(reason)")
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
        if joining {
            let filler = Filler(volume: shell.volume)
            filler.start {
                Self.log("joined: this store has pulled every location it lacked (\(filler.progress.files) files)")
                shell.post(.joinCompleted)
            }
            self.filler = filler
        }
        control = try ControlServer(storePath: storePath) { [weak self] in self?.statusDocument() ?? [] }
        control?.start()
    }

    private func note(rejection: String? = nil, disconnect: String? = nil) {
        linkLock.lock()
        if let rejection { lastRejection = rejection }
        if let disconnect { lastDisconnect = disconnect }
        linkLock.unlock()
    }

    func stop() {
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
        let doc: [String: Any] = [
            "mounted": true, "uptimeMs": Int(s.uptimeMs), "peer": peer, "mirror": mirror, "joining": join,
            "leaving": s.core.leaving, "verify": verification.statusKeys(),
        ]
        return Array((try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])) ?? Data())
    }
}
