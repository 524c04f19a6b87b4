// `twinfs init STORE`: creates a store.
import ArgumentParser
import TwinStore

struct UsageError: Error {
    let message: String
}

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a new store (a backing directory).")

    @Argument(help: "Directory to create the store in (must not exist, or be empty).")
    var store: String

    @Option(help: "This node's name (letters, digits, . _ -).")
    var node: String = defaultNodeName()

    @Option(name: .customLong("track-size"), help: "Track size: a power of two from 4K to 1M.")
    var trackSize: String = "64K"

    func run() throws {
        guard let bytes = parseByteSize(trackSize) else {
            throw UsageError(message: "--track-size: cannot read \"\(trackSize)\" as a size (e.g. 64K, 1M)")
        }
        let identity = try Store.create(at: store, nodeName: node, trackBytes: bytes)
        print("twinfs: created store \(store): volume \(identity.volumeID), node \(identity.nodeName), track size \(identity.trackBytes)")
    }
}

func defaultNodeName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "node" }
    let name = String(cString: buffer).filter { $0.isLetter || $0.isNumber || "-_.".contains($0) }
    return name.isEmpty ? "node" : String(name.prefix(64))
}

import Glibc
