// StoreIdentity: the small, human-readable identity/config file at the root of every store (twinfs.conf).
// It is written once at init and checked at every mount. Never: mutable runtime state (that lives in SQLite).
import Foundation

public struct StoreIdentity: Equatable, Sendable {
    public static let fileName = "twinfs.conf"
    public static let currentFormat = 1
    public static let magic = "twinfs-store"

    public var format: Int
    public var volumeID: String
    public var nodeName: String
    /// Small number unique within a pair; the high 16 bits of every inode number this node allocates,
    /// so two nodes never allocate the same inode number.
    public var nodeIndex: UInt16
    public var trackBytes: Int
    /// Where this node listens for its peer and where it finds it; nil for a store that is not part of a pair.
    public var pairing: Pairing?

    public static let minTrackBytes = 4096
    public static let maxTrackBytes = 1 << 20

    public init(format: Int = StoreIdentity.currentFormat, volumeID: String, nodeName: String, nodeIndex: UInt16, trackBytes: Int) {
        self.format = format
        self.volumeID = volumeID
        self.nodeName = nodeName
        self.nodeIndex = nodeIndex
        self.trackBytes = trackBytes
    }

    public static func validateTrackBytes(_ bytes: Int) throws {
        guard bytes >= minTrackBytes, bytes <= maxTrackBytes, bytes & (bytes - 1) == 0 else {
            throw StoreError.invalidArgument("track size must be a power of two from 4K to 1M, got \(bytes)")
        }
    }

    public static func validateNodeName(_ name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ allowed.contains($0) }) else {
            throw StoreError.invalidArgument("node name must be 1-64 characters of [A-Za-z0-9._-], got \"\(name)\"")
        }
    }

    func serialized() -> String {
        """
        # twinfs store identity: written by `twinfs init`, checked at every mount. Do not edit.
        magic = \(Self.magic)
        format = \(format)
        volume = \(volumeID)
        node = \(nodeName)
        node-index = \(nodeIndex)
        track-bytes = \(trackBytes)
        \(pairing.map { "listen = \($0.listen)\npeer = \($0.peer)\n" } ?? "")
        """
    }

    static func parse(_ text: String, path: String) throws -> StoreIdentity {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw StoreError.corrupt(path: path, detail: "malformed line in \(fileName): \"\(trimmed)\"")
            }
            let key = trimmed[..<eq].trimmingCharacters(in: .whitespaces)
            let value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            fields[key] = value
        }
        guard fields["magic"] == magic else { throw StoreError.notAStore(path: path) }
        guard let format = fields["format"].flatMap({ Int($0) }) else {
            throw StoreError.corrupt(path: path, detail: "\(fileName) has no valid format")
        }
        if format > currentFormat {
            throw StoreError.newerFormat(path: path, found: format, supported: currentFormat)
        }
        guard let volume = fields["volume"], UUID(uuidString: volume) != nil,
            let node = fields["node"], (try? validateNodeName(node)) != nil,
            let index = fields["node-index"].flatMap({ UInt16($0) }), index != 0,
            let track = fields["track-bytes"].flatMap({ Int($0) }), (try? validateTrackBytes(track)) != nil
        else {
            throw StoreError.corrupt(path: path, detail: "\(fileName) has missing or invalid fields")
        }
        var identity = StoreIdentity(format: format, volumeID: volume, nodeName: node, nodeIndex: index, trackBytes: track)
        if let listen = fields["listen"], let peer = fields["peer"] {
            guard let pairing = try? Pairing(listen: listen, peer: peer), index == 1 || index == 2 else {
                throw StoreError.corrupt(path: path, detail: "\(fileName) has an invalid pairing (listen, peer, node-index)")
            }
            identity.pairing = pairing
        }
        return identity
    }
}

/// The two endpoints of a pair, as `init --listen --peer` gave them ("HOST:PORT").
public struct Pairing: Equatable, Sendable {
    public var listen: String
    public var peer: String
    public init(listen: String, peer: String) throws {
        _ = try Self.split(listen, option: "--listen")
        _ = try Self.split(peer, option: "--peer")
        self.listen = listen
        self.peer = peer
    }
    public var listenEndpoint: (host: String, port: Int) { try! Self.split(listen, option: "") }
    public var peerEndpoint: (host: String, port: Int) { try! Self.split(peer, option: "") }

    /// "HOST:PORT" or "[V6]:PORT".
    public static func split(_ text: String, option: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port)
        else { throw StoreError.invalidArgument("\(option): expected HOST:PORT, got \"\(text)\"") }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" ") else { throw StoreError.invalidArgument("\(option): expected HOST:PORT, got \"\(text)\"") }
        return (host, port)
    }

    /// The node index (1 or 2) a node takes when none is given: the two sides of a pair see the same two
    /// endpoints swapped, so ordering them gives each side a different index without talking first.
    public static func defaultNodeIndex(listen: String, peer: String) -> UInt16? {
        let a = (try? split(listen, option: "")) ?? (host: "", port: 0)
        let b = (try? split(peer, option: "")) ?? (host: "", port: 0)
        let wildcard: Set<String> = ["0.0.0.0", "::", "*"]
        if wildcard.contains(a.host) || a.host == b.host { return a.port == b.port ? nil : (a.port < b.port ? 1 : 2) }
        return a.host < b.host ? 1 : (a.host > b.host ? 2 : nil)
    }
}

/// Parses sizes such as "64K", "1M", "4096".
public func parseByteSize(_ text: String) -> Int? {
    let upper = text.uppercased().replacingOccurrences(of: "IB", with: "").replacingOccurrences(of: "B", with: "")
    guard let last = upper.last else { return nil }
    let multipliers: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let m = multipliers[last] {
        return Int(upper.dropLast()).map { $0 * m }
    }
    return Int(upper)
}
