// `twinfs status STORE`: the store's identity and counts, as text or stable JSON.
import ArgumentParser
import Foundation
import TwinNode
import TwinStore

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a store's identity and counts.")

    @Argument(help: "The store directory, or the mountpoint of a mounted store.")
    var store: String

    @Flag(help: "Print JSON (stable field names, for scripts).")
    var json = false

    func run() throws {
        let path = storeOfMountpoint(absolute(store)) ?? store
        let s = try Store.open(at: path, readOnly: true)
        let id = s.identity
        let counts = try s.counts()
        // A mounted paired store answers on its control socket with the live mirror state.
        let live = ControlServer.query(storePath: absolute(path)).flatMap {
            try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
        }
        if json {
            var object: [String: Any] = [
                "store": path, "format": id.format, "volume": id.volumeID, "node": id.nodeName, "nodeIndex": Int(id.nodeIndex),
                "trackBytes": id.trackBytes, "inodes": counts.inodes, "directories": counts.directories,
                "tracks": counts.tracks, "dataBytes": counts.dataBytes, "paired": id.pairing != nil,
                "mounted": mountpointOfStore(absolute(path)) != nil,
            ]
            if let live {
                for (k, v) in live { object[k] = v }
            } else if id.pairing != nil {
                object["persisted"] = try persistedCounts(s)
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("store:       \(path)")
            print("volume:      \(id.volumeID)")
            print("node:        \(id.nodeName) (index \(id.nodeIndex))")
            print("format:      \(id.format)")
            print("track size:  \(id.trackBytes)")
            print("inodes:      \(counts.inodes) (\(counts.directories) directories)")
            print("tracks:      \(counts.tracks)")
            print("data bytes:  \(counts.dataBytes)")
            if let pairing = id.pairing { print("pair:        listen \(pairing.listen), peer \(pairing.peer)") }
            if let live {
                printLive(live)
            } else if id.pairing != nil {
                let p = try persistedCounts(s)
                print("not mounted; persisted mirror state: \(p["moos"] ?? 0) maybe out of sync, \(p["held"] ?? 0) held (superset of out of sync), \(p["contested"] ?? 0) both")
            }
        }
    }
}

private func printLive(_ live: [String: Any]) {
    printMirror(live)
    let promotion = live["promotion"] as? [String: Any] ?? [:]
    if promotion["splitBrain"] as? Bool == true {
        print("SPLIT BRAIN: both nodes were promoted while apart; run `twinfs resolve STORE --keep NODE` (see Docs/OPERATIONS.md)")
    }
    if promotion["sole"] as? Bool == true { print("promoted:    serving every location alone (promotion \(promotion["count"] ?? 0))") }
    if promotion["adopting"] as? Bool == true { print("gave way:    rejoining, adopting the promoted peer's data") }
    if let conflicts = live["conflicts"] as? [[String: Any]], !conflicts.isEmpty {
        print("conflicts:   \(conflicts.count) kept versions (under /.twinfs/conflicts):")
        for c in conflicts { print("  \(c["path"] ?? "?") from \(c["node"] ?? "?") -> \(c["conflictPath"] ?? "?")") }
    }
}

private func printMirror(_ live: [String: Any]) {
    let peer = live["peer"] as? [String: Any] ?? [:]
    let mirror = live["mirror"] as? [String: Any] ?? [:]
    let counters = mirror["counters"] as? [String: Any] ?? [:]
    let rates = mirror["rates"] as? [String: Any] ?? [:]
    let errors = mirror["errors"] as? [String: Any] ?? [:]
    func n(_ d: [String: Any], _ k: String) -> String { d[k].map { "\($0)" } ?? "-" }
    if peer["connected"] as? Bool == true {
        let rtt = (peer["rttMs"] as? Double).map { String(format: "%.2f ms", $0) } ?? "-"
        print("peer:        \(n(peer, "name")) at \(n(peer, "address")), connected for \(n(peer, "connectedForMs")) ms, rtt \(rtt)")
    } else {
        // A partition: how long, and why (the last failed dial or disconnect; refusals are a different problem).
        let since = (peer["disconnectedForMs"] as? Int).map { String(format: " for %.1f s", Double($0) / 1000) } ?? ""
        print("peer:        \(n(peer, "address")) NOT CONNECTED\(since)\(peer["lastError"].map { " (last error: \($0))" } ?? "")\(peer["lastRejection"].map { " (last refusal: \($0))" } ?? "")")
    }
    let blocked = mirror["blocked"] as? [String: Any] ?? [:]
    if (blocked["operations"] as? Int ?? 0) > 0 || (blocked["flushes"] as? Int ?? 0) > 0 || peer["connected"] as? Bool != true {
        print("blocked:     \(n(blocked, "operations")) operations waiting (oldest \(n(blocked, "oldestMs")) ms), \(n(blocked, "flushes")) fsyncs waiting (oldest \(n(blocked, "oldestFlushMs")) ms)")
    }
    print("out of sync: \(n(mirror, "oos")) locations (<= \(n(mirror, "oosBytesUpperBound")) bytes), oldest \(n(mirror, "oldestOOSAgeMs")) ms")
    print("maybe OOS:   \(n(mirror, "moos")) locations; held (MOS): \(n(mirror, "mos"))")
    print("operations:  \(n(counters, "operationsGranted")) granted, \(n(counters, "operationsWithRoundTrip")) waited on the peer, \(n(counters, "operationsFailed")) failed, \(n(mirror, "activeOperations")) active")
    print("messages:    marks \(n(counters, "marksSent")), pulls \(n(counters, "pullsSent")), pushes \(n(counters, "pushesSent")), releases \(n(counters, "releasesSent"))")
    print("link bytes:  sent \(n(peer, "bytesSent")), received \(n(peer, "bytesReceived"))")
    print("rates (/s):  marks \(n(rates, "marks")), pulls \(n(rates, "pulls")), pushes \(n(rates, "pushes")), releases \(n(rates, "releases"))")
    if let join = live["joining"] as? [String: Any], join["active"] as? Bool == true {
        print("joining:     filling from the peer: \(n(join, "directories")) directories, \(n(join, "files")) files, \(n(join, "bytes")) bytes so far")
    }
    print("errors:      store \(n(errors, "store")), dropped sends \(n(errors, "droppedSends")), unstamped writes \(n(errors, "unstampedWrites"))")
    if (mirror["stalledStoreActions"] as? Int ?? 0) > 0 {
        print("stalled:     \(n(mirror, "stalledStoreActions")) store writes wait for the disk (retried; last error: \(n(mirror, "lastError")))")
    }
}

/// The mirror state a stopped paired store will start from (the durable part of its bitmaps).
private func persistedCounts(_ store: Store) throws -> [String: Int] {
    let counts = try store.mirrorStateCounts()
    return ["moos": counts[1] ?? 0, "held": counts[2] ?? 0, "contested": counts[3] ?? 0]
}
