// `twinfs status STORE`: the store's identity and counts, as text or stable JSON.
import ArgumentParser
import Foundation
import TwinStore

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a store's identity and counts.")

    @Argument(help: "The store directory.")
    var store: String

    @Flag(help: "Print JSON (stable field names, for scripts).")
    var json = false

    func run() throws {
        let s = try Store.open(at: store, readOnly: true)
        let id = s.identity
        let counts = try s.counts()
        if json {
            let object: [String: Any] = [
                "store": store, "format": id.format, "volume": id.volumeID, "node": id.nodeName, "nodeIndex": Int(id.nodeIndex),
                "trackBytes": id.trackBytes, "inodes": counts.inodes, "directories": counts.directories,
                "tracks": counts.tracks, "dataBytes": counts.dataBytes,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("store:       \(store)")
            print("volume:      \(id.volumeID)")
            print("node:        \(id.nodeName) (index \(id.nodeIndex))")
            print("format:      \(id.format)")
            print("track size:  \(id.trackBytes)")
            print("inodes:      \(counts.inodes) (\(counts.directories) directories)")
            print("tracks:      \(counts.tracks)")
            print("data bytes:  \(counts.dataBytes)")
        }
    }
}
