// Verifier: `twinfs verify` in the daemon of a mounted paired store. Walks every location of the local store in
// bounded batches, asks the peer for the version and checksum of its copy of the same locations, and reports by
// path what differs: a corrupt copy (same version, different bytes: the copy whose bytes disagree with the checksum
// its node recorded for that version is the corrupt one) or a missed copy (different versions while neither node's
// bitmaps say a copy is due). With repair, the good copy wins: the corrupt side takes the other's bytes at the
// same version, and of a missed copy the newer version wins. Also answers the peer's verify requests.
// Owns: the walk, the comparison rule, the report and the repairs. Never: report a location the core may still be
// copying, or one that changed while it was compared (a write in flight changes the version: it is skipped and
// compared again, and only two consecutive rounds that agree make a report); crash on a store that cannot be
// read (an unreadable location is a difference); step the core or change a bitmap.
import Dispatch
import Foundation
import Glibc
import MirrorCore
import TwinStore

/// The peer's copy of one location, as its verifier answered.
public struct VerifyPeerEntry: Equatable, Sendable {
    public var location: Location
    public var version: UInt64
    /// nil: the peer could not read it.
    public var sum: [UInt8]?
    public var unsettled: Bool
    public var recorded: Bool
    public var mismatchesRecorded: Bool
    public init(location: Location, version: UInt64, sum: [UInt8]?, unsettled: Bool, recorded: Bool, mismatchesRecorded: Bool) {
        self.location = location; self.version = version; self.sum = sum; self.unsettled = unsettled
        self.recorded = recorded; self.mismatchesRecorded = mismatchesRecorded
    }
}

/// The way to the peer's verifier (the daemon implements it over the link). Calls block until the answer or
/// an error (no connection, timeout).
public protocol VerifyPeer: AnyObject {
    func check(_ locations: [Location]) throws -> [VerifyPeerEntry]
    func fetch(_ location: Location) throws -> LocationImage?
    func store(_ location: Location, _ image: LocationImage, sameVersion: Bool) throws -> (applied: Bool, detail: String)
}

/// One reported difference.
public struct VerifyDifference: Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// Same version, different bytes; `corruptOn` says which copy (by its own recorded checksum).
        case corruption
        /// Different versions and no bitmap says a copy is due.
        case missedCopy
    }
    public var kind: Kind
    public var path: String
    public var ino: UInt64
    /// "inode" or "track N".
    public var location: String
    /// corruption: "this", "peer", "both" or "unknown"; missedCopy: where the newer version is ("this", "peer").
    public var side: String
    public var localVersion: UInt64
    public var peerVersion: UInt64
    public var detail: String
    public var repaired: Bool
}

public struct VerifyProgress: Sendable {
    public var active = false
    public var repair = false
    public var finished = false
    public var checked = 0
    public var total = 0
    public var differences = 0
    public var repaired = 0
    /// Locations still being copied at both looks (never reported; a later verify sees them settled).
    public var skippedInFlight = 0
    /// Locations that differed at the first look and were looked at again (mostly writes in flight that settled).
    public var rechecked = 0
    public var runs = 0
    /// Why the last run stopped early (no peer, peer did not answer); nil if it completed.
    public var error: String?
    public var elapsedMs: UInt64 = 0
    public var report: [VerifyDifference] = []
    /// More differences than `Verifier.maxReportedDifferences` were found.
    public var reportTruncated = false
    public init() {}
}

public final class Verifier: @unchecked Sendable {
    public static let batchLocations = 256
    /// How long a round waits before it looks again at what differed (a copy in flight settles in this time).
    public static let recheckDelayMs: UInt32 = 400
    public static let maxReportedDifferences = 1_000

    private let shell: MirrorShell
    private var volume: Volume { shell.volume }
    private let lock = NSLock()
    private var progressValue = VerifyProgress()
    /// Drops the kernel's cached data and attributes of an inode (after a repair rewrote it at the same version,
    /// so the cached pages' mtime check would not notice). Defaults to the shell's attribute invalidation.
    public var invalidateData: (@Sendable (UInt64) -> Void)?
    public var log: (@Sendable (String) -> Void)?

    public init(shell: MirrorShell) {
        self.shell = shell
    }

    public var progress: VerifyProgress { lock.withLock { progressValue } }

    /// Reads whose bytes disagreed with the checksum recorded for their version (by the mirror or a verify).
    public var corruptReads: Int { shell.checksums.counts.corruptReads }
    public var failedChecksumRecordings: Int { shell.checksums.counts.failedRecordings }

    /// Starts a run on its own thread; false if one is running.
    public func start(repair: Bool, peer: VerifyPeer) -> Bool {
        let started: Bool = lock.withLock {
            if progressValue.active { return false }
            let runs = progressValue.runs
            progressValue = VerifyProgress()
            progressValue.active = true
            progressValue.repair = repair
            progressValue.runs = runs + 1
            return true
        }
        guard started else { return false }
        spawnDetachedThread { self.run(repair: repair, peer: peer) }
        return true
    }

    // MARK: the walk

    private func run(repair: Bool, peer: VerifyPeer) {
        let startNs = MirrorShell.monotonicNs()
        var error: String?
        do {
            let counts = try volume.withVolumeLock { try $0.counts() }
            update { $0.total = counts.inodes + counts.tracks }
            var cursor: StoreLocation?
            while true {
                let batch = try volume.withVolumeLock { try $0.locations(after: cursor, limit: Self.batchLocations) }
                guard let last = batch.last else { break }
                cursor = last
                try examine(batch.map(Self.location), repair: repair, peer: peer)
                update { $0.checked += batch.count; $0.total = max($0.total, $0.checked) }
            }
        } catch let e {
            error = "\(e)"
        }
        let elapsed = (MirrorShell.monotonicNs() - startNs) / 1_000_000
        let p: VerifyProgress = update {
            $0.active = false
            $0.finished = true
            $0.error = error
            $0.elapsedMs = elapsed
        }
        log?("verify \(error == nil ? "done" : "stopped: \(error!)"): \(p.checked) locations checked, \(p.differences) differences"
             + (repair ? ", \(p.repaired) repaired" : "") + ", \(p.skippedInFlight) in flight, \(elapsed) ms")
    }

    @discardableResult
    private func update(_ body: (inout VerifyProgress) -> Void) -> VerifyProgress {
        lock.withLock {
            body(&progressValue)
            return progressValue
        }
    }

    /// What one round concluded about a location.
    enum Verdict: Equatable {
        case fine
        /// Changed while compared, or the core may still copy it.
        case inFlight
        case corrupt(version: UInt64)
        case missed(local: UInt64, peer: UInt64)
    }

    struct Look {
        var verdict: Verdict
        var local: Store.LocationCheck
        var peer: VerifyPeerEntry?
    }

    /// Rounds over one batch: what differs is looked at again after a delay, and reported only when two
    /// consecutive rounds agree (same verdict, same versions); at most three rounds.
    private func examine(_ batch: [Location], repair: Bool, peer: VerifyPeer) throws {
        var previous: [Location: Look] = [:]
        var pending = batch
        var skipped = 0
        for round in 0..<3 {
            if round > 0 { usleep(Self.recheckDelayMs * 1000) }
            let looks = try self.round(pending, peer: peer)
            var next: [Location] = []
            if round == 0 {
                let again = looks.filter { $0.verdict != .fine }.count
                if again > 0 { update { $0.rechecked += again } }
            }
            for (l, look) in zip(pending, looks) {
                switch look.verdict {
                case .fine: continue
                case .inFlight where round == 2: skipped += 1
                case .corrupt, .missed:
                    if let before = previous[l], before.verdict == look.verdict {
                        try report(l, look, repair: repair, peer: peer)
                        continue
                    }
                    if round == 2 { skipped += 1 }  // never the same twice in a row: it is moving
                default: break
                }
                previous[l] = look
                if round < 2 { next.append(l) }
            }
            pending = next
            if pending.isEmpty { break }
        }
        if skipped > 0 { update { $0.skippedInFlight += skipped } }
    }

    /// Local look, the peer's look, then the local versions again: a location that changed here in between, or
    /// that either core may still copy, is in flight.
    private func round(_ locations: [Location], peer: VerifyPeer) throws -> [Look] {
        let first = try checkEach(locations)
        let firstBits = shell.unsettled(locations)
        let answers = try peer.check(locations)
        guard answers.count == locations.count, zip(answers, locations).allSatisfy({ $0.location == $1 }) else {
            throw VerifyError.badAnswer("the peer answered for other locations than asked")
        }
        let again = try volume.withVolumeLock { store in try locations.map { try store.storedVersion(StoreLocation($0)) } }
        let againBits = shell.unsettled(locations)
        var looks: [Look] = []
        looks.reserveCapacity(locations.count)
        for i in locations.indices {
            let l = first[i], p = answers[i]
            let verdict: Verdict
            if l.version == 0 && p.version == 0 {
                verdict = .fine  // never written on either node: no content is promised
            } else if l.version != again[i] {
                verdict = .inFlight
            } else if l.version == p.version {
                if let a = l.sum, let b = p.sum, a == b {
                    verdict = .fine
                } else if firstBits[i] || againBits[i] || p.unsettled {
                    verdict = .inFlight
                } else {
                    verdict = .corrupt(version: l.version)
                }
            } else if firstBits[i] || againBits[i] || p.unsettled {
                verdict = .inFlight
            } else {
                verdict = .missed(local: l.version, peer: p.version)
            }
            looks.append(Look(verdict: verdict, local: l, peer: p))
        }
        return looks
    }

    /// Reads and sums each location under the volume lock, one at a time: the lock is never held for a whole batch
    /// of reads (up to 256 MiB with 1 MiB tracks), so filesystem operations wait at most one track's read.
    private func checkEach(_ locations: [Location]) throws -> [Store.LocationCheck] {
        try locations.map { l in try volume.withVolumeLock { $0.checkLocation(StoreLocation(l)) } }
    }

    // MARK: reporting and repair

    private func report(_ location: Location, _ look: Look, repair: Bool, peer: VerifyPeer) throws {
        guard let p = look.peer else { return }
        let l = look.local
        let path = (try? volume.withVolumeLock { try $0.path(of: location.ino) }).flatMap { $0 } ?? "(inode \(location.ino), no path)"
        var d = VerifyDifference(
            kind: .corruption, path: path, ino: location.ino,
            location: location.trackIndex.map { "track \($0)" } ?? "inode", side: "unknown", localVersion: l.version,
            peerVersion: p.version, detail: "", repaired: false)
        switch look.verdict {
        case .corrupt:
            let localBad = l.sum == nil || l.mismatchesRecorded
            let peerBad = p.sum == nil || p.mismatchesRecorded
            switch (localBad, peerBad) {
            case (true, false): d.side = "this"
            case (false, true): d.side = "peer"
            case (true, true): d.side = "both"
            case (false, false):
                // Neither disagrees with its own record: the side that has one vouches for its bytes.
                if l.recordedForVersion && !p.recorded { d.side = "peer" }
                else if p.recorded && !l.recordedForVersion { d.side = "this" }
            }
            var why: [String] = []
            if let e = l.error { why.append("unreadable here: \(e)") }
            if p.sum == nil { why.append("unreadable on the peer") }
            if l.mismatchesRecorded { why.append("this copy differs from the checksum recorded for its version") }
            if p.mismatchesRecorded { why.append("the peer's copy differs from the checksum recorded for its version") }
            if why.isEmpty { why.append("the copies differ at the same version") }
            d.detail = why.joined(separator: "; ")
            if l.mismatchesRecorded || l.sum == nil { shell.checksums.countCorruptRead() }
            if repair {
                do {
                    switch d.side {
                    case "this": d.repaired = try takePeerCopy(location, version: l.version, expectedSum: p.sum, peer: peer, sameVersion: true)
                    case "peer": d.repaired = try givePeerCopy(location, version: l.version, expectedSum: l.sum, peer: peer, sameVersion: true)
                    default: d.detail += "; not repaired: no copy is known good"
                    }
                } catch {
                    d.detail += "; repair failed: \(error)"
                }
            }
        case .missed(let local, let remote):
            d.kind = .missedCopy
            d.side = local > remote ? "this" : "peer"
            d.detail = "version \(Self.describe(local)) here, \(Self.describe(remote)) on the peer, and no bitmap says a copy is due"
            if repair {
                do {
                    if local > remote {
                        d.repaired = try givePeerCopy(location, version: local, expectedSum: l.sum, peer: peer, sameVersion: false)
                    } else {
                        d.repaired = try takePeerCopy(location, version: remote, expectedSum: p.sum, peer: peer, sameVersion: false)
                    }
                } catch {
                    d.detail += "; repair failed: \(error)"
                }
            }
        case .fine, .inFlight:
            return
        }
        log?("verify: \(d.kind.rawValue) of \(d.location) of \(d.path) (\(d.side)): \(d.detail)\(d.repaired ? "; repaired" : "")")
        update {
            $0.differences += 1
            if d.repaired { $0.repaired += 1 }
            if $0.report.count < Self.maxReportedDifferences { $0.report.append(d) } else { $0.reportTruncated = true }
        }
    }

    public static func describe(_ version: UInt64) -> String { "\(version >> 16).\(version & 0xFFFF)" }

    /// Stores the peer's copy here: at the same version (this copy is corrupt), or if it is newer.
    private func takePeerCopy(_ location: Location, version: UInt64, expectedSum: [UInt8]?, peer: VerifyPeer, sameVersion: Bool) throws -> Bool {
        guard let image = try peer.fetch(location) else { throw VerifyError.repair("the peer cannot read its copy either") }
        guard image.version == version else { throw VerifyError.repair("the peer's copy changed meanwhile (a write: nothing to repair)") }
        if let expectedSum, Store.checksum(of: image.bytes, at: StoreLocation(location)) != expectedSum {
            throw VerifyError.repair("the peer's copy changed meanwhile")
        }
        let applied = try apply(location, image, sameVersion: sameVersion)
        if !applied { throw VerifyError.repair("this copy changed meanwhile (a write: nothing to repair)") }
        return true
    }

    /// Sends this node's copy to the peer, to store at the same version (its copy is corrupt) or if it is newer.
    private func givePeerCopy(_ location: Location, version: UInt64, expectedSum: [UInt8]?, peer: VerifyPeer, sameVersion: Bool) throws -> Bool {
        let image = try volume.withVolumeLock { try $0.readLocation(StoreLocation(location)) }
        guard image.version == version else { throw VerifyError.repair("this copy changed meanwhile (a write: nothing to repair)") }
        if let expectedSum, Store.checksum(of: image.bytes, at: StoreLocation(location)) != expectedSum {
            throw VerifyError.repair("this copy changed meanwhile")
        }
        let answer = try peer.store(location, image, sameVersion: sameVersion)
        if !answer.applied { throw VerifyError.repair("the peer did not store it: \(answer.detail)") }
        return true
    }

    /// Writes `image` into the local store: at its own version (a corrupt copy is replaced) or only if newer.
    private func apply(_ location: Location, _ image: LocationImage, sameVersion: Bool) throws -> Bool {
        let l = StoreLocation(location)
        let applied: Bool
        if sameVersion {
            applied = try volume.withVolumeLock { store in
                try store.withReserveOnFullDisk { try store.rewriteLocation(l, image) }
            }
        } else {
            applied = try volume.mirrorApply(location, image, force: false) == image.version
            if applied {
                _ = try? volume.withVolumeLock { try $0.replaceChecksum(l, version: image.version, sum: Store.checksum(of: image.bytes, at: l)) }
            }
        }
        if applied {
            if let invalidateData { invalidateData(location.ino) } else { shell.invalidate?(location.ino) }
        }
        return applied
    }

    // MARK: answering the peer

    /// The peer's verifier asks about `locations`.
    public func answerCheck(_ locations: [Location]) -> [VerifyPeerEntry] {
        let bits = shell.unsettled(locations)
        let checks = (try? checkEach(locations))
            ?? locations.map { _ in Store.LocationCheck(version: 0, sum: nil, mismatchesRecorded: false, recordedForVersion: false, error: "store unavailable") }
        return zip(locations, zip(checks, bits)).map { l, cb in
            let (c, unsettled) = cb
            return VerifyPeerEntry(location: l, version: c.version, sum: c.sum, unsettled: unsettled, recorded: c.recordedForVersion,
                                   mismatchesRecorded: c.mismatchesRecorded)
        }
    }

    /// The peer's verifier wants this node's copy (to repair its own).
    public func answerFetch(_ location: Location) -> LocationImage? {
        try? volume.withVolumeLock { try $0.readLocation(StoreLocation(location)) }
    }

    /// The peer's verifier gives this node its copy: at the same version (this copy is corrupt), or newer.
    public func answerStore(_ location: Location, _ image: LocationImage, sameVersion: Bool) -> (applied: Bool, detail: String) {
        let l = StoreLocation(location)
        if sameVersion {
            // Only a copy that really differs is replaced (the peer judged from a look that may be old).
            let current = (try? volume.withVolumeLock { $0.checkLocation(l) })
            if let c = current, c.version == image.version, c.sum == Store.checksum(of: image.bytes, at: l) {
                return (true, "already equal")
            }
        }
        do {
            guard try apply(location, image, sameVersion: sameVersion) else { return (false, "this copy changed meanwhile") }
            let path = (try? volume.withVolumeLock { try $0.path(of: location.ino) }).flatMap { $0 } ?? "(inode \(location.ino))"
            log?("verify: \(l) of \(path) repaired from the peer's copy (version \(Self.describe(image.version)))")
            return (true, "stored")
        } catch {
            return (false, "\(error)")
        }
    }

    static func location(_ l: StoreLocation) -> Location {
        switch l {
        case .inode(let ino): return .inode(ino)
        case .track(let ino, let index): return .track(ino, index)
        }
    }
}

public enum VerifyError: Error, CustomStringConvertible {
    case badAnswer(String)
    case repair(String)
    case peer(String)
    public var description: String {
        switch self {
        case .badAnswer(let s), .repair(let s), .peer(let s): return s
        }
    }
}
