// `twinfs promote STORE|MNT` and `twinfs resolve STORE|MNT --keep NODE`: the operator's decisions when a node is
// lost (Docs/OPERATIONS.md "Losing a node"). A running daemon is asked over its control socket; a stopped store is
// changed directly (the decision then takes effect at its next mount).
import ArgumentParser
import Foundation
import MirrorCore
import TwinNode
import TwinStore

struct PromoteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Let a node whose peer is gone for good serve everything alone.",
        discussion: """
            Run it on the survivor only when you know the peer is gone (or will be replaced): from then on the
            survivor reads and writes every location locally and remembers what it changed. Changes the peer had
            not copied over yet are lost; they are listed (by path) here. If the old peer comes back, it gives way:
            its own unreplicated changes are kept under /.twinfs/conflicts and it adopts this node's data.
            """)

    @Argument(help: "The store directory, or the mountpoint of a mounted store.")
    var store: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let path = absolute(storeOfMountpoint(absolute(store)) ?? store)
        let identity = try Store.readIdentity(at: path)
        guard identity.pairing != nil else { throw UsageError(message: "store \(path) is not paired: there is nothing to promote") }
        var answer: [String: Any]
        if let live = ControlServer.query(storePath: path, request: "promote", timeoutMs: 30_000) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(live)) as? [String: Any] else {
                throw UsageError(message: "the daemon serving \(path) gave an unreadable answer")
            }
            answer = object
        } else {
            answer = try Self.promoteStopped(path)
        }
        if let error = answer["error"] as? String { throw UsageError(message: "cannot promote \(path): \(error)") }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: answer, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        let lost = answer["lost"] as? [String] ?? []
        print("promoted \(identity.nodeName) (promotion \(answer["promotion"] ?? "?")): it now serves every location alone.")
        if answer["joiningIncomplete"] as? Bool == true {
            print("warning: this store had not finished joining: whatever it never fetched from the peer is lost.")
        }
        if lost.isEmpty {
            print("no file this node knows had changes on the peer that it lacked.")
        } else {
            print("files whose latest changes on the peer are lost (\(lost.count)\(answer["lostTruncated"] as? Bool == true ? "+" : "")):")
            for p in lost { print("  \(p)") }
        }
        if let unseen = answer["lostUnseenInodes"] as? Int, unseen > 0 {
            print("the peer had also reserved \(unseen) inode numbers for new files this node never saw (files it created there, if any, are lost; their directories are listed above).")
        }
    }

    /// A stopped store: the promotion is recorded; the next mount serves alone. Losses from the persisted bits.
    static func promoteStopped(_ path: String) throws -> [String: Any] {
        let store = try Store.open(at: path)
        defer { try? store.close() }
        let saved = try store.loadMirrorState()
        var inodes = Set<UInt64>()
        for row in saved.rows {
            let state = PersistedState(rawValue: row.state)
            if state == .moos || state == .contested { inodes.insert(row.ino) }
        }
        let record = try store.recordPromotion()
        let sorted = inodes.sorted()
        let lost = describe(inodes: Array(sorted.prefix(MirrorShell.maxReportedLosses)), store: store)
        return [
            "promoted": true, "promotion": Int(record.promotion), "lost": lost.paths, "lostUnseenInodes": lost.unseen,
            "lostTruncated": sorted.count > MirrorShell.maxReportedLosses, "joiningIncomplete": saved.joining,
        ]
    }

    /// Paths of the inodes this node knows (a record or a tombstone), and how many it never saw: the peer
    /// reserves inode numbers ahead for its creates, so those may be files the peer created, or nothing.
    static func describe(inodes: [UInt64], volume: Volume) -> (paths: [String], unseen: Int) {
        (try? volume.withStore { describe(inodes: inodes, store: $0) }) ?? (inodes.map { "inode \($0)" }, 0)
    }

    static func describe(inodes: [UInt64], store: Store) -> (paths: [String], unseen: Int) {
        var paths: [String] = []
        var unseen = 0
        for ino in inodes {
            guard ((try? store.storedVersion(.inode(ino))) ?? 0) > 0 else {
                unseen += 1
                continue
            }
            paths.append((try? store.path(of: ino)).flatMap { $0 } ?? "inode \(ino) (deleted on this node)")
        }
        return (paths, unseen)
    }
}

struct ResolveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract: "Settle a split brain (both nodes promoted while apart) by choosing whose data win.",
        discussion: """
            Run it on one of the two stores (either), after both daemons refused each other with "split brain".
            NODE is this store's node name, or a node index (1 or 2). The other node gives way at the next connection: its own changes
            are kept under /.twinfs/conflicts and it adopts the kept node's data.
            """)

    @Argument(help: "The store directory, or the mountpoint of a mounted store.")
    var store: String

    @Option(help: "The node whose data win: this store's node name, or a node index (1 or 2).")
    var keep: String

    func run() throws {
        let path = absolute(storeOfMountpoint(absolute(store)) ?? store)
        let identity = try Store.readIdentity(at: path)
        guard identity.pairing != nil else { throw UsageError(message: "store \(path) is not paired: there is no split brain to resolve") }
        // A typo must not make this node give way: the peer is named by its index only (this store does not
        // know the peer's name for sure).
        let peerIndex = String(3 - Int(identity.nodeIndex))
        let keepThis: Bool
        if keep == identity.nodeName || keep == String(identity.nodeIndex) {
            keepThis = true
        } else if keep == peerIndex {
            keepThis = false
        } else {
            throw UsageError(message: "--keep \(keep) names neither this node (\(identity.nodeName), index \(identity.nodeIndex)) nor the peer (index \(peerIndex))")
        }
        if let live = ControlServer.query(storePath: path, request: keepThis ? "resolve keep-this" : "resolve keep-peer") {
            let object = (try? JSONSerialization.jsonObject(with: Data(live)) as? [String: Any]) ?? [:]
            if let error = object["error"] as? String { throw UsageError(message: "cannot resolve: \(error)") }
        } else {
            let s = try Store.open(at: path)
            defer { try? s.close() }
            try s.resolveSplitBrain(keepThisNode: keepThis)
        }
        print(keepThis
            ? "resolved: \(identity.nodeName)'s data win; the peer gives way at the next connection"
            : "resolved: the peer's data win; \(identity.nodeName) gives way at the next connection (its changes go to /.twinfs/conflicts)")
    }
}
