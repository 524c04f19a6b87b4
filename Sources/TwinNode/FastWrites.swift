// FastWrites: overwrites of an unpaired store's open file without a transaction each. A write that changes no
// size, no mode and no xattr changes only the file's times, its allocation and its tracks' versions; after the
// first such write committed the inode as unsettled (TwinStore/Unsettled.swift), the next ones only note their
// tracks here. Times and allocation stay in the data file, where the kernel put them at the write, and a stat
// reads them from there; a store reopened after a kill -9 rebuilds the rest from the data file. Every mutation
// settles the entries first (writes them to SQLite and ends them; a write's mutation only its own file's), so a
// mutation's body always reads exact records.
// Owns: the in-memory entries and the rules for taking the fast path. Never: paired volumes (a mirrored write
// needs its versions committed before the peer may ask for them), size changes, SQLite.
import Glibc
import TwinStore

struct FastWrites {
    struct Entry {
        /// The last commit that changed this inode's record other than through this entry. Once it is durable,
        /// fsync needs the data file alone: whatever the entry holds comes back from it.
        var exactCommit: UInt64
        /// Only a mutation changes the size, and every mutation ends every entry.
        let size: UInt64
        /// Tracks written since the entry was last settled.
        var tracks: Set<UInt64> = []
    }

    private(set) var entries: [UInt64: Entry] = [:]
    /// Entries begun inside the running mutation's transaction: they exist only once it commits.
    private var begun: [UInt64: Entry] = [:]
    /// Entries the running mutation settled, kept until it commits (they come back if it rolls back). While a
    /// mutation runs they are not in `entries`: its body reads the records exactly as it writes them.
    private var settling: (entries: [UInt64: Entry], trackCount: Int)?

    /// Tracks noted over all entries. Bounds the memory (a few MiB at most); a write past it takes the slow
    /// path, whose mutation settles everything.
    private(set) var trackCount = 0
    let maxTracks: Int
    static let maxInodes = 1_024

    init(maxTracks: Int = 65_536) {
        self.maxTracks = maxTracks
    }

    var isEmpty: Bool { entries.isEmpty }

    /// The record as a stat must show it. Times and allocation come from the data file (Store.withDataFileChanges),
    /// not from a stat per write: a stat of the data file makes the kernel stamp its next write with a fine
    /// timestamp, whose change then costs the data file's fsync a journal commit.
    func current(_ record: InodeRecord, in store: Store) throws -> InodeRecord {
        guard entries[record.ino] != nil else { return record }
        return try store.withDataFileChanges(record)
    }

    /// Whether a write of `count` bytes at `offset` may take the fast path; if so the entry now holds it.
    mutating func record(ino: UInt64, offset: UInt64, count: UInt64, trackBytes: UInt64) -> Bool {
        guard var e = entries[ino], count > 0, offset + count <= e.size else { return false }
        let tracks = (offset / trackBytes)...((offset + count - 1) / trackBytes)
        guard trackCount + tracks.count <= maxTracks else { return false }
        for t in tracks where e.tracks.insert(t).inserted { trackCount += 1 }
        entries[ino] = e
        return true
    }

    /// Whether the slow write that just made `record` exact (in the running transaction) may begin an entry.
    func mayBegin(after record: InodeRecord, sizeBefore: UInt64, end: UInt64) -> Bool {
        let setID = record.mode & UInt32(S_ISUID) != 0
            || (record.mode & UInt32(S_ISGID) != 0 && record.mode & UInt32(S_IXGRP) != 0)
        return end <= sizeBefore && record.kind == .regular && record.nlink > 0 && !setID
            && entries.count + begun.count < Self.maxInodes
    }

    mutating func begin(_ record: InodeRecord, commit: UInt64) {
        begun[record.ino] = Entry(exactCommit: commit, size: record.size)
    }

    /// A commit changed `ino`'s record outside the entry (an access time): fsync must wait for it again.
    mutating func noteCommit(_ ino: UInt64, _ commit: UInt64) {
        entries[ino]?.exactCommit = commit
    }

    /// Writes the entries' times, allocation and track versions into their records and marks them settled
    /// (inside the running mutation's transaction); they end only if it commits. `only`: the one inode a write
    /// changes (its mutation reads and changes no other record); nil: every entry.
    mutating func settle(in store: Store, only: UInt64? = nil) throws {
        precondition(settling == nil, "one settle per attempt")
        let ending = only.map { ino in entries.filter { $0.key == ino } } ?? entries
        try store.settle(ending)
        settling = (ending, trackCount)
        for ino in ending.keys { entries[ino] = nil }
        trackCount = entries.values.reduce(0) { $0 + $1.tracks.count }
    }

    /// The running mutation committed: the entries it settled are over, those it began start.
    mutating func mutationCommitted() {
        entries.merge(begun) { _, new in new }
        begun = [:]
        settling = nil
        trackCount = entries.values.reduce(0) { $0 + $1.tracks.count }
    }

    /// A mutation's transaction starts (again: Store.withReserveOnFullDisk retries one that found the disk
    /// full): what an earlier attempt settled or began was rolled back with it.
    mutating func attemptBegins() {
        mutationRolledBack()
    }

    mutating func mutationRolledBack() {
        if let settling {
            entries.merge(settling.entries) { _, settled in settled }
            trackCount = settling.trackCount
        }
        begun = [:]
        settling = nil
    }

    /// The data file fsync may use alone for `ino`, given the commits the WAL made durable.
    func fsyncAlone(_ ino: UInt64, durableCommits: UInt64) -> Bool {
        guard let e = entries[ino] else { return false }
        return e.exactCommit <= durableCommits
    }
}

extension Store {
    fileprivate func settle(_ entries: [UInt64: FastWrites.Entry]) throws {
        for (ino, e) in entries {
            var runs: [ClosedRange<UInt64>] = []
            for t in e.tracks.sorted() {
                if let last = runs.last, last.upperBound + 1 == t {
                    runs[runs.count - 1] = last.lowerBound...t
                } else {
                    runs.append(t...t)
                }
            }
            try settle(ino, writtenTracks: runs)
        }
    }
}
