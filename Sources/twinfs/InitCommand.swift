// `twinfs init STORE`: creates a store.
import ArgumentParser
import Crypto
import Foundation
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

    @Option(help: "HOST:PORT this node listens on for its peer (makes the store one half of a pair).")
    var listen: String?

    @Option(help: "HOST:PORT of the peer's --listen address.")
    var peer: String?

    @Option(name: .customLong("secret-file"), help: "File with the pair's shared secret (at least 16 bytes; the same on both nodes).")
    var secretFile: String?

    @Option(name: .customLong("node-id"), help: "1 or 2, different on the two nodes (default: derived from --listen and --peer).")
    var nodeID: UInt16?

    func run() throws {
        guard let bytes = parseByteSize(trackSize) else {
            throw UsageError(message: "--track-size: cannot read \"\(trackSize)\" as a size (e.g. 64K, 1M)")
        }
        var pairing: Pairing?
        var nodeIndex: UInt16?
        var secret: [UInt8] = []
        if listen != nil || peer != nil || secretFile != nil || nodeID != nil {
            guard let listen, let peer, let secretFile else {
                throw UsageError(message: "a paired store needs --listen, --peer and --secret-file together")
            }
            pairing = try Pairing(listen: listen, peer: peer)
            if let nodeID {
                guard nodeID == 1 || nodeID == 2 else { throw UsageError(message: "--node-id takes 1 or 2, got \(nodeID)") }
                nodeIndex = nodeID
            } else {
                guard let derived = Pairing.defaultNodeIndex(listen: listen, peer: peer) else {
                    throw UsageError(message: "cannot tell which node is which from --listen \(listen) and --peer \(peer): give --node-id 1 on one node and --node-id 2 on the other")
                }
                nodeIndex = derived
            }
            guard let data = FileManager.default.contents(atPath: secretFile) else {
                throw UsageError(message: "--secret-file: cannot read \(secretFile)")
            }
            guard data.count >= 16 else {
                throw UsageError(message: "--secret-file: \(secretFile) has \(data.count) bytes; at least 16 are needed")
            }
            secret = Array(data)
        }
        let volume = pairing.map { pairedVolumeID(secret: secret, $0) }
        let identity = try Store.create(at: store, nodeName: node, trackBytes: bytes, nodeIndex: nodeIndex, pairing: pairing, volumeID: volume)
        if pairing != nil {
            // The store keeps its own copy (mode 0600): mounting needs no other file.
            let path = store + "/secret"
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0, write(fd, secret, secret.count) == secret.count, fsync(fd) == 0 else {
                throw UsageError(message: "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            close(fd)
            print("twinfs: created store \(store): volume \(identity.volumeID), node \(identity.nodeName) (\(identity.nodeIndex) of the pair), listening on \(listen!), peer \(peer!), track size \(identity.trackBytes)")
            return
        }
        print("twinfs: created store \(store): volume \(identity.volumeID), node \(identity.nodeName), track size \(identity.trackBytes)")
    }
}

/// The two halves of a pair are initialised apart and must agree on one volume: both derive it from the one
/// thing they share, the secret (addresses differ by side: wildcards, NAT), so two fresh stores of one pair
/// always match. A store of another pair has another secret and is refused at the handshake.
func pairedVolumeID(secret: [UInt8], _ pairing: Pairing) -> String {
    var hasher = SHA256()
    hasher.update(data: Array("twinfs volume v1|".utf8) + secret)
    var b = Array(hasher.finalize())
    b[6] = (b[6] & 0x0F) | 0x50  // a name-based UUID (version 5 layout)
    b[8] = (b[8] & 0x3F) | 0x80
    let hex = b.prefix(16).map { String(format: "%02x", $0) }.joined()
    let c = Array(hex)
    return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { String(c[$0]) }.joined(separator: "-")
}

func defaultNodeName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "node" }
    let name = String(cString: buffer).filter { $0.isLetter || $0.isNumber || "-_.".contains($0) }
    return name.isEmpty ? "node" : String(name.prefix(64))
}

import Glibc
