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
        return StoreIdentity(format: format, volumeID: volume, nodeName: node, nodeIndex: index, trackBytes: track)
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
