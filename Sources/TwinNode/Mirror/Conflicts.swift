// Conflicts: what a demoted node keeps of its own changes (DESIGN G6: nothing silently discarded). Before a
// demotion wipes the node's mirror state, `preserve` copies this node's version of every changed inode out of the
// store into a pending directory (fsync'ed: it must survive the wipe and any crash); once the tree is the winner's,
// `importPending` recreates those copies under /.twinfs/conflicts/ with ordinary Volume operations, so they are
// mirrored to the peer like any file; `list` reads the conflicts back for `twinfs status`.
// Owns: the pending format (one directory per batch) and the layout of /.twinfs/conflicts.
// Never: decide which side lost (the demotion does), touch mirror state, or preserve anything under /.twinfs.
import Foundation
import Glibc
import TwinStore

public struct ConflictRecord: Codable, Equatable, Sendable {
    /// The path on the node that lost (best effort; "/.twinfs/lost/inode-N" when no name leads to the inode).
    public var path: String
    /// "file", "directory", "symlink", "deleted", "other".
    public var kind: String
    /// The losing node's name.
    public var node: String
    /// When it was preserved.
    public var timeUnixMs: Int64
    /// Data size preserved (files), target length (symlinks), 0 otherwise.
    public var bytes: UInt64
    /// Where the preserved copy is (or will be, until imported) in the tree; a directory's copy is its listing
    /// file. Empty for records with nothing to copy ("deleted", "other").
    public var conflictPath: String

    public init(path: String, kind: String, node: String, timeUnixMs: Int64, bytes: UInt64, conflictPath: String) {
        self.path = path
        self.kind = kind
        self.node = node
        self.timeUnixMs = timeUnixMs
        self.bytes = bytes
        self.conflictPath = conflictPath
    }
}

public enum ConflictError: Error, Equatable, CustomStringConvertible {
    case tooManyInodes(count: Int, limit: Int)
    case invalidNodeName(String)
    /// A file of the pending directory could not be written or read.
    case io(path: String, detail: String)
    /// A pending batch that does not parse, or whose files contradict each other.
    case corruptPending(path: String, detail: String)
    /// The tree already has this conflict directory, from another batch.
    case directoryTaken(path: String)
    /// Something in the tree is in the way of a copy (a file where a directory must be, or the reverse).
    case inTheWay(path: String)
    /// A Volume operation failed.
    case volume(path: String, error: FSError)

    public var description: String {
        switch self {
        case .tooManyInodes(let count, let limit):
            return "conflicts: \(count) inodes to preserve in one call, at most \(limit) (preserve them in batches)"
        case .invalidNodeName(let name): return "conflicts: invalid node name \"\(name)\""
        case .io(let path, let detail): return "conflicts: \(path): \(detail)"
        case .corruptPending(let path, let detail): return "conflicts: pending batch \(path) is corrupt: \(detail)"
        case .directoryTaken(let path): return "conflicts: \(path) already exists and belongs to another batch"
        case .inTheWay(let path): return "conflicts: \(path) is in the way of a preserved copy"
        case .volume(let path, let error): return "conflicts: \(path): \(error)"
        }
    }
}

public enum Conflicts {
    public static let maxInodesPerCall = 10_000
    /// Deeper names than this are treated as unresolvable (the copy goes under /.twinfs/lost/).
    public static let maxPathDepth = 1024
    public static let copyChunkBytes = 1 << 20
    /// A directory's listing keeps at most this many names (and says so when it stops).
    public static let maxListingNames = 1_000_000
    public static let maxManifestBytes = 64 << 20
    /// Pending batches one import handles (the rest wait for the next call).
    public static let maxBatchesPerImport = 1000
    public static let maxConflictDirectoriesListed = 10_000

    public static let treeDirectory = ".twinfs"
    public static let conflictsDirectory = "conflicts"
    public static let manifestName = ".manifest.json"
    /// Inside a preserved directory's copy: its names, one per line.
    public static let listingName = ".twinfs-listing.txt"
    static let batchFile = "batch.json"
    static let tmpPrefix = ".tmp-"
    static let format = 1
    static let root = Caller(uid: 0, gid: 0)

    // MARK: preserve

    /// Before a demotion wipes the mirror state: copies the current local version of each inode (data file
    /// contents, symlink target, directory listing as a text file of names, attributes/mode) out of the store into
    /// `pendingDirectory` (e.g. STORE/conflicts-pending), with a manifest (JSON), all fsync'ed before returning.
    /// Reads the store directly (no mirror involved: the daemon is not serving the tree at this point); the
    /// caller keeps every other user of the store away meanwhile. One call makes one batch, which appears in the
    /// pending directory whole (renamed into place) or not at all.
    public static func preserve(store: Store, inodes: [UInt64], nodeName: String, nowUnixMs: Int64, pendingDirectory: String) throws -> [ConflictRecord] {
        do {
            return try preserveBatch(store: store, inodes: inodes, nodeName: nodeName, nowUnixMs: nowUnixMs, pendingDirectory: pendingDirectory)
        } catch let error as SQLiteError {
            throw ConflictError.io(path: store.root, detail: "reading the store: \(error)")
        } catch let error as FSError {
            throw ConflictError.io(path: store.root, detail: "reading the store: \(error)")
        }
    }

    private static func preserveBatch(store: Store, inodes: [UInt64], nodeName: String, nowUnixMs: Int64, pendingDirectory: String) throws -> [ConflictRecord] {
        guard (try? StoreIdentity.validateNodeName(nodeName)) != nil else { throw ConflictError.invalidNodeName(nodeName) }
        var seen = Set<UInt64>()
        let unique = inodes.filter { seen.insert($0).inserted }
        guard unique.count <= maxInodesPerCall else { throw ConflictError.tooManyInodes(count: unique.count, limit: maxInodesPerCall) }
        defer { store.database.releaseStatements() }

        let name = timestamp(nowUnixMs) + "-" + nodeName
        let conflictRoot = "/\(treeDirectory)/\(conflictsDirectory)"
        var resolver = PathResolver(store: store)
        var entries: [PendingEntry] = []
        for ino in unique {
            guard let entry = try describe(ino, store: store, resolver: &resolver, node: nodeName, nowUnixMs: nowUnixMs) else { continue }
            entries.append(entry)
        }
        guard !entries.isEmpty else { return [] }

        try makeDirectory(pendingDirectory, parents: true)
        removeStaleTemporaries(pendingDirectory)
        // Batches of one node within one second (a demotion retried at once) get a suffix.
        var batchName = name
        var suffix = 1
        while access("\(pendingDirectory)/\(batchName)", F_OK) == 0 {
            suffix += 1
            guard suffix < 1000 else { throw ConflictError.io(path: pendingDirectory, detail: "too many batches named \(name)") }
            batchName = "\(name)-\(suffix)"
        }
        // Two copies never share a path: a preserved file named like the manifest or like a preserved
        // directory's listing gets its inode number appended.
        var taken: Set<[[UInt8]]> = [[Array(manifestName.utf8)]]
        for i in entries.indices where entries[i].hasCopy {
            if !taken.insert(entries[i].copyComponents).inserted {
                let leaf = entries[i].copyComponents.last!
                let suffix = Array(".inode-\(entries[i].ino)".utf8)
                entries[i].copyLeaf = Data(leaf.prefix(Volume.maxNameBytes - suffix.count) + suffix)
                taken.insert(entries[i].copyComponents)
            }
            entries[i].record.conflictPath = conflictRoot + "/" + batchName + displayPath(entries[i].copyComponents)
        }
        let temporary = "\(pendingDirectory)/\(tmpPrefix)\(batchName)"
        try makeDirectory(temporary, parents: false)
        var renamed = false
        // A failed preserve leaves nothing behind (and a crashed one is swept by the next).
        defer { if !renamed { try? FileManager.default.removeItem(atPath: temporary) } }
        for (i, entry) in entries.enumerated() {
            switch entry.record.kind {
            case Kind.file: try copyData(of: entry.ino, size: entry.record.bytes, store: store, to: "\(temporary)/\(i).data")
            case Kind.directory: try writeListing(of: entry.ino, path: entry.record.path, store: store, to: "\(temporary)/\(i).data")
            default: break
            }
            // An empty marker: the directory's fsync below makes it durable.
            let marker = open("\(temporary)/\(i).todo", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard marker >= 0 else { throw ConflictError.io(path: "\(temporary)/\(i).todo", detail: errnoText()) }
            close(marker)
        }
        let batch = PendingBatch(
            format: format, batch: "\(nodeName)@\(nowUnixMs)#\(suffix)", name: batchName, node: nodeName, timeUnixMs: nowUnixMs,
            entries: entries)
        try writeFile("\(temporary)/\(batchFile)", Array(try JSONEncoder().encode(batch)))
        try syncDirectory(temporary)
        guard rename(temporary, "\(pendingDirectory)/\(batchName)") == 0 else { throw ConflictError.io(path: temporary, detail: errnoText()) }
        renamed = true
        try syncDirectory(pendingDirectory)
        return entries.map(\.record)
    }

    enum Kind {
        static let file = "file", directory = "directory", symlink = "symlink", deleted = "deleted", other = "other"
    }

    /// What one inode's preserved copy will be; nil for inodes under /.twinfs (never preserved).
    private static func describe(_ ino: UInt64, store: Store, resolver: inout PathResolver, node: String, nowUnixMs: Int64) throws -> PendingEntry? {
        let lost: [[UInt8]] = [Array(treeDirectory.utf8), Array("lost".utf8), Array("inode-\(ino)".utf8)]
        guard let r = try store.inode(ino), r.nlink > 0 else {
            // Deleted here (tombstone, or unlinked and still open): nothing to copy, but the record says so.
            let record = ConflictRecord(path: displayPath(lost), kind: Kind.deleted, node: node, timeUnixMs: nowUnixMs, bytes: 0, conflictPath: "")
            return PendingEntry(ino: ino, record: record, components: lost.map { Data($0) }, ancestors: [], attributes: nil, symlinkTarget: nil, xattrs: [])
        }
        var components = lost
        var ancestors: [DirectoryAttributes] = []
        if let place = try resolver.path(of: ino) {
            if place.components.first == Array(treeDirectory.utf8) { return nil }
            components = place.components
            ancestors = place.ancestors
        }
        let kind: String
        var bytes: UInt64 = 0
        var target: Data?
        switch r.kind {
        case .regular:
            kind = Kind.file
            bytes = r.size
        case .directory: kind = Kind.directory
        case .symlink:
            kind = Kind.symlink
            bytes = UInt64(r.target.count)
            target = Data(r.target)
        default: kind = Kind.other
        }
        var xattrs: [PendingXattr] = []
        for name in try store.xattrNames(ino: ino) where name.starts(with: Array("user.".utf8)) {
            // Only user attributes: security.* and trusted.* would hand the copy privileges it must not have.
            if let value = try store.xattr(ino: ino, name: name) { xattrs.append(PendingXattr(name: Data(name), value: Data(value))) }
        }
        let record = ConflictRecord(path: displayPath(components), kind: kind, node: node, timeUnixMs: nowUnixMs, bytes: bytes, conflictPath: "")
        return PendingEntry(
            ino: ino, record: record, components: components.map { Data($0) }, ancestors: ancestors,
            attributes: FileAttributes(r), symlinkTarget: target, xattrs: xattrs)
    }

    /// Copies a file's data in bounded chunks; all-zero chunks stay holes (they read back as zeros).
    private static func copyData(of ino: UInt64, size: UInt64, store: Store, to path: String) throws {
        let source = try store.openData(ino, create: false)  // -1: no data file yet, all zeros
        defer { if source >= 0 { close(source) } }
        let out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
        defer { close(out) }
        var buffer = [UInt8](repeating: 0, count: copyChunkBytes)
        var offset: UInt64 = 0
        while offset < size {
            let want = Int(min(UInt64(copyChunkBytes), size - offset))
            let got = source < 0 ? 0 : try preadFully(source, &buffer, count: want, offset: offset, path: path)
            // Past the data file's end (tracks not here) the file reads as zeros.
            if got < want { for i in got..<want { buffer[i] = 0 } }
            if buffer[0..<want].contains(where: { $0 != 0 }) {
                try pwriteFully(out, buffer, count: want, offset: offset, path: path)
            }
            offset += UInt64(want)
        }
        guard ftruncate(out, off_t(size)) == 0, fsync(out) == 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
    }

    /// A directory's names as text, one per line (bytes that would break a line or are not UTF-8 as %XX).
    private static func writeListing(of ino: UInt64, path: String, store: Store, to file: String) throws {
        let out = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw ConflictError.io(path: file, detail: errnoText()) }
        defer { close(out) }
        var offset: UInt64 = 0
        func emit(_ line: String) throws {
            let bytes = Array((line + "\n").utf8)
            try pwriteFully(out, bytes, count: bytes.count, offset: offset, path: file)
            offset += UInt64(bytes.count)
        }
        try emit("# twinfs: names in directory \(path) when it was preserved, one per line; %XX: a byte that is not printable UTF-8")
        var cookie: Int64 = 0
        var written = 0
        while written < maxListingNames {
            let page = try store.entries(parent: ino, after: cookie, limit: min(1024, maxListingNames - written))
            if page.isEmpty { break }
            for e in page { try emit(escape(e.name)) }
            written += page.count
            cookie = page.last!.cookie
        }
        if written == maxListingNames, try !store.entries(parent: ino, after: cookie, limit: 1).isEmpty {
            try emit("# ... more names not listed (at most \(maxListingNames))")
        }
        guard fsync(out) == 0 else { throw ConflictError.io(path: file, detail: errnoText()) }
    }

    // MARK: import

    /// After the demotion (the tree is now the winner's): creates every pending preserved copy under
    /// `/.twinfs/conflicts/` through ordinary Volume operations (mkdir -p, create, write, mode; as root), so the
    /// copies are mirrored to the peer like any file; removes each pending entry once imported; idempotent when
    /// re-run after a crash midway (never duplicates, never loses a pending entry). Returns the records of the
    /// entries this call imported.
    public static func importPending(volume: Volume, pendingDirectory: String) throws -> [ConflictRecord] {
        guard access(pendingDirectory, F_OK) == 0 else { return [] }
        var imported: [ConflictRecord] = []
        let batches = try listDirectory(pendingDirectory).filter { !$0.hasPrefix(".") }.sorted().prefix(maxBatchesPerImport)
        for name in batches {
            imported += try importBatch(volume: volume, directory: "\(pendingDirectory)/\(name)", pendingDirectory: pendingDirectory)
        }
        return imported
    }

    private static func importBatch(volume: Volume, directory: String, pendingDirectory: String) throws -> [ConflictRecord] {
        let batchPath = "\(directory)/\(batchFile)"
        guard access(batchPath, F_OK) == 0 else {
            // A crash between removing batch.json and the directory: only an empty directory may be left.
            let left = try listDirectory(directory)
            guard left.allSatisfy({ !$0.hasSuffix(".todo") }) else {
                throw ConflictError.corruptPending(path: directory, detail: "entries left without \(batchFile)")
            }
            try removeBatchDirectory(directory, leftovers: left, pendingDirectory: pendingDirectory)
            return []
        }
        let batch: PendingBatch
        do {
            batch = try JSONDecoder().decode(PendingBatch.self, from: Data(try readFile(batchPath, limit: maxManifestBytes)))
        } catch let error as ConflictError {
            throw error
        } catch {
            throw ConflictError.corruptPending(path: batchPath, detail: "\(error)")
        }
        guard batch.format == format else { throw ConflictError.corruptPending(path: batchPath, detail: "format \(batch.format)") }

        let tree = TreeWriter(volume: volume)
        let twinfs = try tree.directory(in: InodeRecord.rootIno, Array(treeDirectory.utf8), attributes: .shared, path: "/\(treeDirectory)")
        let conflicts = try tree.directory(in: twinfs, Array(conflictsDirectory.utf8), attributes: .shared, path: "/\(treeDirectory)/\(conflictsDirectory)")
        let batchRootPath = "/\(treeDirectory)/\(conflictsDirectory)/\(batch.name)"
        let batchRoot = try tree.directory(in: conflicts, Array(batch.name.utf8), attributes: .shared, path: batchRootPath)

        // The manifest comes first and names every entry, so both nodes list the whole batch even while its
        // copies are still being made.
        let manifest = TreeManifest(format: format, batch: batch.batch, node: batch.node, timeUnixMs: batch.timeUnixMs, records: batch.entries.map(\.record))
        let manifestBytes = Array(try JSONEncoder().encode(manifest))
        let manifestPath = batchRootPath + "/" + manifestName
        if let existing = try tree.child(of: batchRoot, Array(manifestName.utf8), path: manifestPath) {
            let found = try? JSONDecoder().decode(TreeManifest.self, from: Data(try readTreeFile(volume, existing.ino, limit: maxManifestBytes, path: manifestPath)))
            if let found, found.batch != batch.batch { throw ConflictError.directoryTaken(path: batchRootPath) }
            if found != manifest { try tree.writeFile(in: batchRoot, Array(manifestName.utf8), path: manifestPath, bytes: manifestBytes, attributes: .privateFile) }
        } else {
            try tree.writeFile(in: batchRoot, Array(manifestName.utf8), path: manifestPath, bytes: manifestBytes, attributes: .privateFile)
        }

        var imported: [ConflictRecord] = []
        for (i, entry) in batch.entries.enumerated() {
            let todo = "\(directory)/\(i).todo"
            let data = "\(directory)/\(i).data"
            guard access(todo, F_OK) == 0 else { continue }
            let needsData = entry.hasData
            // The data file goes only after its copy is in the tree: a todo without it was imported already.
            if !needsData || access(data, F_OK) == 0 {
                try importEntry(entry, data: data, batchRoot: batchRoot, batchRootPath: batchRootPath, tree: tree)
            }
            if needsData { guard unlink(data) == 0 || errno == ENOENT else { throw ConflictError.io(path: data, detail: errnoText()) } }
            guard unlink(todo) == 0 || errno == ENOENT else { throw ConflictError.io(path: todo, detail: errnoText()) }
            imported.append(entry.record)
        }
        try syncDirectory(directory)
        guard unlink(batchPath) == 0 else { throw ConflictError.io(path: batchPath, detail: errnoText()) }
        try removeBatchDirectory(directory, leftovers: try listDirectory(directory), pendingDirectory: pendingDirectory)
        return imported
    }

    private static func importEntry(_ entry: PendingEntry, data: String, batchRoot: UInt64, batchRootPath: String, tree: TreeWriter) throws {
        guard entry.hasCopy else { return }
        let names = entry.names
        var parent = batchRoot
        var parentPath = batchRootPath
        // Directories on the way keep the original's owner and permissions, so the copy is no more visible than
        // the original was; unknown ones (lost inodes) are root's alone.
        let leafIsDirectory = entry.record.kind == Kind.directory
        let ancestorCount = leafIsDirectory ? names.count : names.count - 1
        for (depth, name) in names.prefix(ancestorCount).enumerated() {
            parentPath += "/" + escape(name)
            var attributes = depth < entry.ancestors.count ? entry.ancestors[depth].attributes : FileAttributes.rootOnlyDirectory
            if leafIsDirectory && depth == names.count - 1, let own = entry.attributes { attributes = own }
            parent = try tree.directory(in: parent, name, attributes: attributes, path: parentPath)
        }
        guard let attributes = entry.attributes, let leaf = entry.copyComponents.last else { return }
        switch entry.record.kind {
        case Kind.file:
            try tree.copyFile(in: parent, leaf, path: entry.record.conflictPath, from: data, size: entry.record.bytes, attributes: attributes)
            if !entry.xattrs.isEmpty, let copy = try tree.child(of: parent, leaf, path: entry.record.conflictPath) {
                try tree.setXattrs(of: copy.ino, path: entry.record.conflictPath, entry.xattrs)
            }
        case Kind.directory:
            // The listing is readable by whoever could list the directory.
            let listing = FileAttributes(mode: (attributes.mode & 0o444) | 0o200, uid: attributes.uid, gid: attributes.gid, atimeNs: attributes.mtimeNs, mtimeNs: attributes.mtimeNs)
            try tree.copyFile(in: parent, leaf, path: entry.record.conflictPath, from: data, size: nil, attributes: listing)
            // The original root's attributes are not given to the batch directory.
            if !names.isEmpty { try tree.apply(attributes, to: parent, path: parentPath) }
            if !names.isEmpty { try tree.setXattrs(of: parent, path: parentPath, entry.xattrs) }
        case Kind.symlink:
            try tree.symlink(in: parent, leaf, target: Array(entry.symlinkTarget ?? Data()), path: entry.record.conflictPath, attributes: attributes)
        default:
            break
        }
        // What changed after the copy's own fsync (a directory's attributes, extended attributes) is durable
        // too before the pending entry goes.
        if entry.record.kind == Kind.directory || !entry.xattrs.isEmpty { try tree.syncMetadata(path: entry.record.conflictPath) }
    }

    private static func removeBatchDirectory(_ directory: String, leftovers: [String], pendingDirectory: String) throws {
        for name in leftovers where unlink("\(directory)/\(name)") != 0 && errno != ENOENT {
            throw ConflictError.io(path: "\(directory)/\(name)", detail: errnoText())
        }
        guard rmdir(directory) == 0 else { throw ConflictError.io(path: directory, detail: errnoText()) }
        try syncDirectory(pendingDirectory)
    }

    // MARK: list

    /// The conflicts present in the tree (`/.twinfs/conflicts/*/...`), for `twinfs status` (bounded by `limit`):
    /// the newest batch first, each batch's records in the order they were preserved. A conflict directory
    /// without a readable manifest is skipped.
    public static func list(volume: Volume, limit: Int) throws -> [ConflictRecord] {
        guard limit > 0 else { return [] }
        let tree = TreeWriter(volume: volume)
        guard let twinfs = try tree.child(of: InodeRecord.rootIno, Array(treeDirectory.utf8), path: "/\(treeDirectory)"), twinfs.isDirectory,
            let conflicts = try tree.child(of: twinfs.ino, Array(conflictsDirectory.utf8), path: "/\(treeDirectory)/\(conflictsDirectory)"),
            conflicts.isDirectory
        else { return [] }
        var batches: [(name: [UInt8], ino: UInt64)] = []
        var offset: Int64 = 0
        while batches.count < maxConflictDirectoriesListed {
            let page: [DirectoryListing]
            do { page = try volume.readdir(conflicts.ino, offset: offset, limit: 256, plus: false) } catch let error as FSError {
                throw ConflictError.volume(path: "/\(treeDirectory)/\(conflictsDirectory)", error: error)
            }
            guard let last = page.last else { break }
            for e in page where e.name != Array(".".utf8) && e.name != Array("..".utf8) { batches.append((e.name, e.record.ino)) }
            offset = last.nextOffset
        }
        var out: [ConflictRecord] = []
        for batch in batches.sorted(by: { $0.name.lexicographicallyPrecedes($1.name) }).reversed() {
            let path = "/\(treeDirectory)/\(conflictsDirectory)/\(escape(batch.name))/\(manifestName)"
            guard let file = try? tree.child(of: batch.ino, Array(manifestName.utf8), path: path), file.kind == .regular,
                let bytes = try? readTreeFile(volume, file.ino, limit: maxManifestBytes, path: path),
                let manifest = try? JSONDecoder().decode(TreeManifest.self, from: Data(bytes))
            else { continue }
            out += manifest.records.prefix(limit - out.count)
            if out.count >= limit { break }
        }
        return out
    }

    /// A whole (bounded) file of the tree, through planned reads.
    static func readTreeFile(_ volume: Volume, _ ino: UInt64, limit: Int, path: String) throws -> [UInt8] {
        do {
            let size = try volume.getattr(ino).size
            guard size <= UInt64(limit) else { throw ConflictError.io(path: path, detail: "\(size) bytes, more than \(limit)") }
            let handle = try volume.open(ino, flags: O_RDONLY)
            defer { volume.release(handle) }
            var bytes = [UInt8](repeating: 0, count: Int(size))
            var offset = 0
            while offset < bytes.count {
                let got = try volume.withReadSource(handle: handle, offset: UInt64(offset), size: min(copyChunkBytes, bytes.count - offset)) { source -> Int in
                    guard source.count > 0 else { return 0 }
                    return bytes.withUnsafeMutableBytes { raw in pread(source.fd, raw.baseAddress! + offset, source.count, off_t(offset)) }
                }
                guard got > 0 else { break }  // shorter than its size said: it shrank meanwhile
                offset += got
            }
            return Array(bytes[0..<offset])
        } catch let error as FSError {
            throw ConflictError.volume(path: path, error: error)
        }
    }

    // MARK: names and paths

    /// "20261127T061200Z": the UTC second of `ms`.
    static func timestamp(_ ms: Int64) -> String {
        var seconds = time_t(ms >= 0 ? ms / 1000 : (ms - 999) / 1000)
        var t = tm()
        gmtime_r(&seconds, &t)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return pad(t.tm_year + 1900, 4) + pad(t.tm_mon + 1, 2) + pad(t.tm_mday, 2) + "T" + pad(t.tm_hour, 2) + pad(t.tm_min, 2) + pad(t.tm_sec, 2) + "Z"
    }

    static func displayPath(_ components: [[UInt8]]) -> String {
        components.isEmpty ? "/" : components.map { "/" + escape($0) }.joined()
    }

    /// A name as text: valid UTF-8 stays, except "%" and control characters; anything else becomes %XX.
    static func escape(_ name: [UInt8]) -> String {
        let valid = String(validating: name, as: UTF8.self) != nil
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for byte in name {
            if byte == 0x25 || byte < 0x20 || byte == 0x7f || (!valid && byte >= 0x80) {
                out += [0x25, hex[Int(byte >> 4)], hex[Int(byte & 0xf)]]
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - pending format

struct FileAttributes: Codable, Equatable {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var atimeNs: Int64
    var mtimeNs: Int64

    init(mode: UInt32, uid: UInt32, gid: UInt32, atimeNs: Int64, mtimeNs: Int64) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atimeNs = atimeNs
        self.mtimeNs = mtimeNs
    }

    /// Permission bits only: a copy never carries set-user-ID, set-group-ID or sticky bits (a preserved setuid
    /// file made by root would otherwise hand out its owner's privileges).
    init(_ r: InodeRecord) {
        self.init(mode: r.mode & 0o777, uid: r.uid, gid: r.gid, atimeNs: r.atime.nanoseconds, mtimeNs: r.mtime.nanoseconds)
    }

    /// /.twinfs, /.twinfs/conflicts and each batch directory: everyone may look, only root changes them.
    static let shared = FileAttributes(mode: 0o755, uid: 0, gid: 0, atimeNs: -1, mtimeNs: -1)
    static let rootOnlyDirectory = FileAttributes(mode: 0o700, uid: 0, gid: 0, atimeNs: -1, mtimeNs: -1)
    /// The manifest names every preserved path, including those under private directories.
    static let privateFile = FileAttributes(mode: 0o600, uid: 0, gid: 0, atimeNs: -1, mtimeNs: -1)
}

struct DirectoryAttributes: Codable, Equatable {
    var attributes: FileAttributes
}

struct PendingXattr: Codable, Equatable {
    var name: Data
    var value: Data
}

struct PendingEntry: Codable, Equatable {
    var ino: UInt64
    var record: ConflictRecord
    /// The original path's names below the root (a lost inode's: .twinfs/lost/inode-N).
    var components: [Data]
    /// Owner and permissions of each directory on the original path (as many as resolved).
    var ancestors: [DirectoryAttributes]
    var attributes: FileAttributes?
    var symlinkTarget: Data?
    var xattrs: [PendingXattr]

    var hasCopy: Bool { [Conflicts.Kind.file, Conflicts.Kind.directory, Conflicts.Kind.symlink].contains(record.kind) }
    /// Where the copy goes below the batch directory: a directory's copy is its listing inside it.
    var names: [[UInt8]] { components.map { Array($0) } }
    /// Replaces the last name of the copy when the natural one is taken.
    var copyLeaf: Data?
    var copyComponents: [[UInt8]] {
        var path = record.kind == Conflicts.Kind.directory ? names + [Array(Conflicts.listingName.utf8)] : names
        if let copyLeaf, !path.isEmpty { path[path.count - 1] = Array(copyLeaf) }
        return path
    }
    /// A data file in the pending batch: a file's contents, a directory's listing.
    var hasData: Bool { record.kind == Conflicts.Kind.file || record.kind == Conflicts.Kind.directory }
}

struct PendingBatch: Codable, Equatable {
    var format: Int
    /// Tells this batch apart from another that happens to get the same directory name.
    var batch: String
    var name: String
    var node: String
    var timeUnixMs: Int64
    var entries: [PendingEntry]
}

/// `/.twinfs/conflicts/<name>/.manifest.json`: mirrored with the copies, so both nodes can list them.
struct TreeManifest: Codable, Equatable {
    var format: Int
    var batch: String
    var node: String
    var timeUnixMs: Int64
    var records: [ConflictRecord]
}

// MARK: - resolving paths in the store

/// Walks `dirents` up to the root, remembering every directory it resolved (siblings share their ancestors).
struct PathResolver {
    struct Place {
        var components: [[UInt8]]
        var ancestors: [DirectoryAttributes]
    }

    let store: Store
    private var directories: [UInt64: Place] = [InodeRecord.rootIno: Place(components: [], ancestors: [])]

    init(store: Store) { self.store = store }

    /// The inode's first path, or nil when no chain of names leads from the root to it within `maxPathDepth`.
    mutating func path(of ino: UInt64) throws -> Place? {
        if ino == InodeRecord.rootIno { return directories[ino] }
        guard let (parent, name) = try store.firstEntry(naming: ino), let above = try directory(parent) else { return nil }
        guard above.components.count < Conflicts.maxPathDepth else { return nil }
        return Place(components: above.components + [name], ancestors: above.ancestors)
    }

    /// The place of directory `ino` with its own attributes appended to its ancestors' (for its children).
    private mutating func directory(_ ino: UInt64) throws -> Place? {
        if let known = directories[ino] { return known }
        // Climb to the nearest known directory, then fill the cache on the way down.
        var chain: [(ino: UInt64, name: [UInt8], record: InodeRecord)] = []
        var current = ino
        var visited = Set<UInt64>()
        while directories[current] == nil {
            guard chain.count < Conflicts.maxPathDepth, visited.insert(current).inserted,
                let r = try store.inode(current), r.isDirectory,
                let (parent, name) = try store.firstEntry(naming: current)
            else { return nil }
            chain.append((current, name, r))
            current = parent
        }
        var place = directories[current]!
        for link in chain.reversed() {
            place = Place(components: place.components + [link.name], ancestors: place.ancestors + [DirectoryAttributes(attributes: FileAttributes(link.record))])
            guard place.components.count <= Conflicts.maxPathDepth else { return nil }
            directories[link.ino] = place
        }
        return place
    }
}

// MARK: - writing the tree through the Volume

/// Volume operations as root, with the kernel-style lookup references each one takes handed back at once.
struct TreeWriter {
    let volume: Volume

    init(volume: Volume) { self.volume = volume }

    private func run<T>(_ path: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as FSError { throw ConflictError.volume(path: path, error: error) }
    }

    func child(of parent: UInt64, _ name: [UInt8], path: String) throws -> InodeRecord? {
        try run(path) {
            do {
                let r = try volume.lookup(parent: parent, name: name)
                volume.forget(r.ino, count: 1)
                return r
            } catch FSError.notFound {
                return nil
            }
        }
    }

    /// mkdir -p for one level: the existing directory, or a new one with `attributes`.
    func directory(in parent: UInt64, _ name: [UInt8], attributes: FileAttributes, path: String) throws -> UInt64 {
        if let existing = try child(of: parent, name, path: path) {
            guard existing.isDirectory else { throw ConflictError.inTheWay(path: path) }
            return existing.ino
        }
        let made = try run(path) { () -> InodeRecord in
            let r = try volume.mkdir(parent: parent, name: name, mode: 0o700, caller: Conflicts.root)
            volume.forget(r.ino, count: 1)
            return r
        }
        try apply(attributes, to: made.ino, path: path)
        return made.ino
    }

    func apply(_ a: FileAttributes, to ino: UInt64, path: String, symlink: Bool = false) throws {
        var changes = AttributeChanges()
        if !symlink { changes.mode = a.mode & 0o777 }
        changes.uid = a.uid
        changes.gid = a.gid
        if a.mtimeNs >= 0 {
            changes.mtime = .value(Timestamp(nanoseconds: a.mtimeNs))
            changes.atime = .value(Timestamp(nanoseconds: a.atimeNs))
        }
        _ = try run(path) { try volume.setattr(ino, changes, handle: nil, caller: Conflicts.root) }
    }

    /// Creates or truncates `name` and fills it from `source` (a pending data file) in bounded chunks; chunks of
    /// zeros are left as holes. Durable (fsync) before it returns. `size` nil: the source's whole length.
    func copyFile(in parent: UInt64, _ name: [UInt8], path: String, from source: String, size: UInt64?, attributes: FileAttributes) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw ConflictError.io(path: source, detail: errnoText()) }
        defer { close(input) }
        var st = stat()
        guard fstat(input, &st) == 0 else { throw ConflictError.io(path: source, detail: errnoText()) }
        let length = size ?? UInt64(st.st_size)
        try replaceNonFile(in: parent, name, path: path)
        try run(path) {
            let (record, handle) = try volume.create(parent: parent, name: name, mode: 0o600, flags: O_WRONLY | O_TRUNC, caller: Conflicts.root)
            volume.forget(record.ino, count: 1)
            defer { volume.release(handle) }
            var buffer = [UInt8](repeating: 0, count: Conflicts.copyChunkBytes)
            var offset: UInt64 = 0
            var end: UInt64 = 0
            while offset < length {
                let want = Int(min(UInt64(Conflicts.copyChunkBytes), length - offset))
                let got = try preadFully(input, &buffer, count: want, offset: offset, path: source)
                if got < want { for i in got..<want { buffer[i] = 0 } }
                if buffer[0..<want].contains(where: { $0 != 0 }) {
                    let at = offset
                    let written = try volume.withWriteTarget(handle: handle, offset: at, count: want, caller: Conflicts.root) { fd, position in
                        try pwriteFully(fd, buffer, count: want, offset: position, path: path)
                        return want
                    }
                    guard written == want else { throw ConflictError.io(path: path, detail: "short write") }
                    end = at + UInt64(want)
                }
                offset += UInt64(want)
            }
            if end < length {
                var grow = AttributeChanges()
                grow.size = length
                _ = try volume.setattr(record.ino, grow, handle: handle, caller: Conflicts.root)
            }
            try apply(attributes, to: record.ino, path: path)
            try volume.fsync(handle: handle, ino: record.ino, dataOnly: false)
        }
    }

    /// A symlink left by an earlier, interrupted import is replaced; a directory is in the way.
    private func replaceNonFile(in parent: UInt64, _ name: [UInt8], path: String) throws {
        guard let existing = try child(of: parent, name, path: path) else { return }
        if existing.isDirectory { throw ConflictError.inTheWay(path: path) }
        if existing.kind != .regular { try run(path) { try volume.unlink(parent: parent, name: name) } }
    }

    func symlink(in parent: UInt64, _ name: [UInt8], target: [UInt8], path: String, attributes: FileAttributes) throws {
        if let existing = try child(of: parent, name, path: path) {
            if existing.kind == .symlink && existing.target == target {
                try apply(attributes, to: existing.ino, path: path, symlink: true)
                return
            }
            if existing.isDirectory { throw ConflictError.inTheWay(path: path) }
            try run(path) { try volume.unlink(parent: parent, name: name) }
        }
        try run(path) {
            let r = try volume.symlink(target: target, parent: parent, name: name, caller: Conflicts.root)
            volume.forget(r.ino, count: 1)
            try apply(attributes, to: r.ino, path: path, symlink: true)
            try volume.fsyncDirectory()
        }
    }

    func writeFile(in parent: UInt64, _ name: [UInt8], path: String, bytes: [UInt8], attributes: FileAttributes) throws {
        try replaceNonFile(in: parent, name, path: path)
        try run(path) {
            let (record, handle) = try volume.create(parent: parent, name: name, mode: attributes.mode, flags: O_WRONLY | O_TRUNC, caller: Conflicts.root)
            volume.forget(record.ino, count: 1)
            defer { volume.release(handle) }
            var offset = 0
            while offset < bytes.count {
                let want = min(Conflicts.copyChunkBytes, bytes.count - offset)
                let at = offset
                _ = try volume.withWriteTarget(handle: handle, offset: UInt64(at), count: want, caller: Conflicts.root) { fd, position in
                    try pwriteFully(fd, Array(bytes[at..<at + want]), count: want, offset: position, path: path)
                    return want
                }
                offset += want
            }
            try apply(attributes, to: record.ino, path: path)
            try volume.fsync(handle: handle, ino: record.ino, dataOnly: false)
        }
    }

    func syncMetadata(path: String) throws {
        try run(path) { try volume.fsyncDirectory() }
    }

    func setXattrs(of ino: UInt64, path: String, _ xattrs: [PendingXattr]) throws {
        for x in xattrs {
            try run(path) { try volume.setxattr(ino, name: Array(x.name), value: Array(x.value), create: false, replace: false) }
        }
    }
}

// MARK: - files of the pending directory

private func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

private func preadFully(_ fd: Int32, _ buffer: inout [UInt8], count: Int, offset: UInt64, path: String) throws -> Int {
    var done = 0
    while done < count {
        let n = buffer.withUnsafeMutableBytes { raw in pread(fd, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw ConflictError.io(path: path, detail: errnoText())
        }
        if n == 0 { break }
        done += n
    }
    return done
}

private func pwriteFully(_ fd: Int32, _ buffer: [UInt8], count: Int, offset: UInt64, path: String) throws {
    var done = 0
    while done < count {
        let n = buffer.withUnsafeBytes { raw in pwrite(fd, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw ConflictError.io(path: path, detail: errnoText())
        }
        done += n
    }
}

private func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
    defer { close(fd) }
    try pwriteFully(fd, bytes, count: bytes.count, offset: 0, path: path)
    guard fsync(fd) == 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
}

private func readFile(_ path: String, limit: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
    guard st.st_size <= limit else { throw ConflictError.corruptPending(path: path, detail: "\(st.st_size) bytes, more than \(limit)") }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    let got = try preadFully(fd, &bytes, count: bytes.count, offset: 0, path: path)
    return Array(bytes[0..<got])
}

private func makeDirectory(_ path: String, parents: Bool) throws {
    if parents {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw ConflictError.io(path: path, detail: "not a directory") }
            return
        }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path { try makeDirectory(parent, parents: true) }
    }
    guard mkdir(path, 0o700) == 0 || (parents && errno == EEXIST) else { throw ConflictError.io(path: path, detail: errnoText()) }
    let parent = (path as NSString).deletingLastPathComponent
    try syncDirectory(parent.isEmpty ? "." : parent)
}

private func syncDirectory(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw ConflictError.io(path: path, detail: errnoText()) }
}

private func listDirectory(_ path: String) throws -> [String] {
    do {
        return try FileManager.default.contentsOfDirectory(atPath: path)
    } catch {
        throw ConflictError.io(path: path, detail: "cannot list: \(error.localizedDescription)")
    }
}

/// Batches a crashed `preserve` left half-written: never renamed into place, so never promised to anyone.
private func removeStaleTemporaries(_ pendingDirectory: String) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: pendingDirectory) else { return }
    for name in names where name.hasPrefix(Conflicts.tmpPrefix) {
        try? FileManager.default.removeItem(atPath: "\(pendingDirectory)/\(name)")
    }
}
