// TwinSim/Workload.swift: the shape of the simulated filesystem and the operations clients issue against it.
// Owns: the location space (directories, files with tracks, inode records, spare inode numbers per node) and the
// generator of client operations for each workload kind.
// Must never: decide anything about the protocol: an operation only names locations and which slots it overwrites.

public struct SimLayout: Sendable {
    public enum Kind: Equatable, Sendable {
        /// The metadata location of an inode (attributes; for a directory, its entries).
        case inodeRecord(inode: UInt64)
        case track(inode: UInt64, index: UInt64)
    }
    public struct File: Sendable { public let inode: UInt64; public let record: Int; public let tracks: [Int] }

    public private(set) var kinds: [Kind] = []
    public private(set) var slotCounts: [Int] = []
    public private(set) var directories: [Int] = []
    public private(set) var files: [File] = []
    /// Inode-record locations each node may create, in the order it allocates them.
    public private(set) var spareInodes: [[Int]] = [[], []]
    public let slotsPerTrack: Int

    public init(config c: SwarmConfig) {
        slotsPerTrack = c.slotsPerTrack
        var nextInode: UInt64 = 1
        func add(_ kind: Kind, slots: Int) -> Int {
            kinds.append(kind); slotCounts.append(slots); return kinds.count - 1
        }
        for _ in 0..<c.directoryCount {
            directories.append(add(.inodeRecord(inode: nextInode), slots: c.slotsPerTrack)); nextInode += 1
        }
        for _ in 0..<c.fileCount {
            let inode = nextInode; nextInode += 1
            let record = add(.inodeRecord(inode: inode), slots: 1)
            let tracks = (0..<c.tracksPerFile).map { add(.track(inode: inode, index: UInt64($0)), slots: c.slotsPerTrack) }
            files.append(File(inode: inode, record: record, tracks: tracks))
        }
        // Each node allocates from its own range, as a real pair must (two nodes creating at once never collide).
        for node in 0..<2 {
            for _ in 0..<c.spareInodesPerNode {
                spareInodes[node].append(add(.inodeRecord(inode: nextInode), slots: 1)); nextInode += 1
            }
        }
    }

    public var locationCount: Int { kinds.count }

    /// Adds a location outside the generated layout (the simulator calls this when the core names one).
    public mutating func add(_ kind: Kind, slots: Int) -> Int {
        kinds.append(kind); slotCounts.append(slots); return kinds.count - 1
    }
    public func registers(_ location: Int) -> [RegisterKey] {
        (0..<slotCounts[location]).map { RegisterKey(location: location, slot: $0) }
    }
    public func name(_ location: Int) -> String {
        switch kinds[location] {
        case .inodeRecord(let ino): return "ino\(ino)"
        case .track(let ino, let idx): return "ino\(ino)/t\(idx)"
        }
    }
}

/// One client operation: read some locations entirely, overwrite some slots of others.
public struct SimOp: CustomStringConvertible, Sendable {
    public struct Write: Sendable {
        public let location: Int
        public let slots: [Int]
        public let full: Bool
    }
    public enum Category: String, Sendable { case read, write, create, rename, stat, readdir, fsync }
    public let category: Category
    public let reads: [Int]
    public let writes: [Write]
    public let label: String
    /// Locations an fsync makes durable on both nodes.
    public var flush: [Int] = []
    public var description: String { label }
    /// Tracks this operation writes (for the "marks per written track" figure).
    public func writtenTracks(_ layout: SimLayout) -> Int {
        writes.filter { if case .track = layout.kinds[$0.location] { return true } else { return false } }.count
    }
}

/// Generates operations for one node; keeps per-node cursors so that sequential workloads really are sequential.
public struct WorkloadGenerator: Sendable {
    public let layout: SimLayout
    public let kind: WorkloadKind
    private var mixWeights: [Double]
    private var cursor: [Int] = [0, 0]
    private var created: [[Int]] = [[], []]
    private var nextSpare: [Int] = [0, 0]

    public init(layout: SimLayout, kind: WorkloadKind, random: inout SimRandom) {
        self.layout = layout
        self.kind = kind
        // Weights over: read, full write, partial write, multi-track write, create, rename, stat, readdir.
        switch kind {
        case .sequential: mixWeights = [4, 4, 1, 2, 0, 0, 1, 0]
        case .random: mixWeights = [4, 3, 3, 2, 0.3, 0.3, 1, 0.5]
        case .createHeavy: mixWeights = [1, 0.5, 0.5, 0, 5, 2, 3, 3]
        case .contending: mixWeights = [4, 3, 3, 2, 0.2, 0.2, 1, 0.2]
        case .mixed: mixWeights = (0..<8).map { _ in Double(random.int(0...4)) }
            if mixWeights.reduce(0, +) == 0 { mixWeights[0] = 1; mixWeights[2] = 1 }
        }
    }

    private func file(for node: Int, _ r: inout SimRandom) -> SimLayout.File {
        switch kind {
        case .sequential: return layout.files[node % layout.files.count]
        case .contending: return layout.files[0]
        default: return r.pick(layout.files)
        }
    }

    private mutating func trackIndex(node: Int, file: SimLayout.File, _ r: inout SimRandom) -> Int {
        switch kind {
        case .sequential:
            let i = cursor[node] % file.tracks.count
            cursor[node] += 1
            return i
        case .contending: return r.int(0...min(1, file.tracks.count - 1))
        default: return r.int(0...(file.tracks.count - 1))
        }
    }

    private func partialSlots(_ location: Int, _ r: inout SimRandom) -> [Int] {
        let n = layout.slotCounts[location]
        if n == 1 { return [0] }
        let count = r.int(1...(n - 1))
        var all = Array(0..<n)
        for i in 0..<count { all.swapAt(i, r.int(i...(n - 1))) }
        return Array(all[0..<count]).sorted()
    }

    private func full(_ location: Int) -> SimOp.Write {
        SimOp.Write(location: location, slots: Array(0..<layout.slotCounts[location]), full: true)
    }

    /// An fsync of one file (its record and tracks), as an editor or a database would issue after writing.
    public func fsync(node: Int, _ r: inout SimRandom) -> SimOp {
        let f = kind == .sequential ? layout.files[node % layout.files.count] : r.pick(layout.files)
        var op = SimOp(category: .fsync, reads: [], writes: [], label: "fsync ino\(f.inode)")
        op.flush = [f.record] + f.tracks
        return op
    }

    public mutating func next(node: Int, _ r: inout SimRandom) -> SimOp {
        let choice = r.weighted(mixWeights)
        let f = file(for: node, &r)
        switch choice {
        case 0:  // read one or two consecutive tracks
            let i = trackIndex(node: node, file: f, &r)
            let span = kind == .sequential || r.chance(0.3) ? Array(f.tracks[i...min(i + 1, f.tracks.count - 1)]) : [f.tracks[i]]
            return SimOp(category: .read, reads: span, writes: [], label: "read \(span.map(layout.name))")
        case 1:  // full-track overwrite plus the inode record (mtime/size)
            let t = f.tracks[trackIndex(node: node, file: f, &r)]
            return SimOp(category: .write, reads: [], writes: [full(t), full(f.record)],
                         label: "write-full \(layout.name(t))")
        case 2:  // partial write: needs the current track first (Fig. 5B)
            let t = f.tracks[trackIndex(node: node, file: f, &r)]
            let slots = partialSlots(t, &r)
            return SimOp(category: .write, reads: [],
                         writes: [SimOp.Write(location: t, slots: slots, full: slots.count == layout.slotCounts[t]),
                                  full(f.record)],
                         label: "write-partial \(layout.name(t)) slots\(slots)")
        case 3:  // a write spanning tracks: partial head, full middle, plus the inode record
            let i = trackIndex(node: node, file: f, &r)
            let last = min(f.tracks.count - 1, i + r.int(1...2))
            var writes: [SimOp.Write] = []
            for (n, t) in f.tracks[i...last].enumerated() {
                if n == 0 && r.chance(0.5) {
                    let s = partialSlots(t, &r)
                    writes.append(SimOp.Write(location: t, slots: s, full: s.count == layout.slotCounts[t]))
                } else {
                    writes.append(full(t))
                }
            }
            writes.append(full(f.record))
            return SimOp(category: .write, reads: [], writes: writes,
                         label: "write-span \(f.tracks[i...last].map(layout.name))")
        case 4:  // create: one directory entry (partial write of the directory) plus a fresh inode record
            let dir = r.pick(layout.directories)
            let pool = layout.spareInodes[node]
            let ino = pool[nextSpare[node] % pool.count]
            nextSpare[node] += 1
            created[node].append(ino)
            let entry = [r.int(0...(layout.slotCounts[dir] - 1))]
            return SimOp(category: .create, reads: [],
                         writes: [SimOp.Write(location: dir, slots: entry, full: false), full(ino)],
                         label: "create \(layout.name(ino)) in \(layout.name(dir))")
        case 5:  // rename: an entry leaves one directory and enters another; the inode's ctime changes
            let from = r.pick(layout.directories), to = r.pick(layout.directories)
            let ino = created[node].isEmpty ? f.record : r.pick(created[node])
            var writes = [SimOp.Write(location: from, slots: [r.int(0...(layout.slotCounts[from] - 1))], full: false)]
            if to != from {
                writes.append(SimOp.Write(location: to, slots: [r.int(0...(layout.slotCounts[to] - 1))], full: false))
            }
            writes.append(full(ino))
            return SimOp(category: .rename, reads: [], writes: writes,
                         label: "rename \(layout.name(ino)) \(layout.name(from))->\(layout.name(to))")
        case 6:
            let ino = !created[node].isEmpty && r.chance(0.5) ? r.pick(created[node]) : f.record
            return SimOp(category: .stat, reads: [ino], writes: [], label: "stat \(layout.name(ino))")
        default:
            let dir = r.pick(layout.directories)
            return SimOp(category: .readdir, reads: [dir], writes: [], label: "readdir \(layout.name(dir))")
        }
    }
}
