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
        let recovered = RecoveredState(entries: entries, clockReservation: saved.clockReservation, incarnation: incarnation)
        store.database.releaseStatements()
        let config = MirrorConfig(node: me, peer: peer, peerTimeoutTicks: Tick(peerTimeoutMs))
        volume.fsyncMirror = fsyncMirror
        let box = LinkBox()
        shell = MirrorShell(volume: volume, config: config, prediction: FilesystemPrediction(), recovered: recovered) { message in
            guard let link = box.link else { return false }
            switch link.trySend(message) {
            case .queued: return true
            case .notConnected: return false
            case .queueFull, .tooLarge:
                // The core counts on delivery while a connection lasts: end this one, and its re-send after the
                // next handshake covers what was lost.
                link.dropConnection()
                return false
            }
        }
        shell.log = { line in Self.log(line) }
        self.box = box
    }

    private let box: LinkBox
    final class LinkBox: @unchecked Sendable { var link: PeerLink? }

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
                    shell.post(.connectionUp(epoch: epoch))
                case .message(let message):
                    shell.post(.received(message))
                case .disconnected(_, let reason):
                    Self.log("peer disconnected: \(reason)")
                    self?.note(disconnect: "\(reason)")
                    shell.post(.connectionDown)
                case .rejected(let reason, let remote):
                    Self.log("connection with \(remote) refused: \(reason)")
                    self?.note(rejection: "\(remote): \(reason)")
                case .writable:
                    break
                }
            }
        } catch {
            throw UsageError(message: "cannot listen on \(pairing.listen): \(error)")
        }
        box.link = link
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
        let mirror: [String: Any] = [
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
        let doc: [String: Any] = ["mounted": true, "uptimeMs": Int(s.uptimeMs), "peer": peer, "mirror": mirror]
        return Array((try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])) ?? Data())
    }
}
