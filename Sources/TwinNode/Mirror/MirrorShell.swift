// MirrorShell: the thin shell that runs the protocol core (MirrorCore.MirrorNode) for a mounted volume.
// Owns: one executor thread that alone steps the core and performs its actions in order (store reads and
// writes, bitmap persistence with group commit, kernel cache invalidation, sends), and the waiters of FUSE
// threads blocked on a grant or a flush. Must never: block on the network or on a FUSE request (the executor
// only touches the store and the kernel's non-blocking notifications), or decide protocol policy itself.
import Dispatch
import Foundation
import Glibc
import MirrorCore
import TwinStore

/// What a blocked operation learns from the core.
enum GrantResult {
    case granted([Stamp])
    case failed(OperationError)
}

final class Waiter: @unchecked Sendable {
    let semaphore = DispatchSemaphore(value: 0)
    /// When the FUSE thread started waiting (shell milliseconds): the age of blocked operations in status.
    let sinceMs: UInt64
    init(sinceMs: UInt64) { self.sinceMs = sinceMs }
    var grant: GrantResult?
    var flushError: OperationError??
}

/// Figures for `twinfs status` (a snapshot, refreshed by the executor).
public struct MirrorShellStatus: Sendable {
    public var core: MirrorStatus
    public var uptimeMs: UInt64
    public var connectedSinceMs: UInt64?
    public var droppedSends: Int
    public var storeErrors: Int
    public var unstampedWrites: Int
    public var persistBatches: Int
    public var metadataSyncs: Int
    public var bytesPushed: UInt64
    public var bytesReceived: UInt64
    public var lastError: String?
    /// Per-second rates over the last complete window of `rateWindowMs`: marks, pulls, pushes, releases.
    public var rates: [String: Double]
    /// Since when (shell milliseconds) the core has had no connection; nil while connected.
    public var disconnectedSinceMs: UInt64? = 0
    /// Operations (and fsync=mirror flushes) whose FUSE thread waits on the core, and the age of the oldest. During
    /// a partition these are the ones waiting for the peer (they fail with EIO at `peerTimeoutMs`).
    public var blockedOperations = 0
    public var oldestBlockedOperationMs: UInt64 = 0
    public var blockedFlushes = 0
    public var oldestBlockedFlushMs: UInt64 = 0
    /// Store actions that failed (a full disk) and wait to be retried, and how many retries were made.
    public var stalledStoreActions = 0
    public var storeRetries = 0
}

public final class MirrorShell: @unchecked Sendable {
    public let volume: Volume
    let core: MirrorNode
    /// Sends a message on the current connection; false if it could not be queued (the caller then drops the
    /// connection so the core's re-send after the next handshake covers it).
    private let send: @Sendable (Message, UInt64) -> Bool
    /// The connection epoch the core last stepped into (0: none); sends are tied to it.
    private var coreEpoch: UInt64 = 0
    /// Drops kernel caches for an inode (attributes; data pages are checked against mtime on the next read).
    public var invalidate: (@Sendable (UInt64) -> Void)?
    public var log: (@Sendable (String) -> Void)?
    /// Checksums of the images the executor reads and stores anyway (Verify/ChecksumRecorder.swift).
    let checksums = ChecksumRecorder()

    private let condition = NSCondition()
    private var inbox: [Event] = []
    private var waiters: [OperationID: Waiter] = [:]
    private var flushWaiters: [FlushID: Waiter] = [:]
    private var nextOperation: UInt64 = 1
    private var nextFlush: UInt64 = 1
    private var stopping = false
    private var stopped = false
    private let startNs: UInt64
    private var lastTickMs: UInt64 = 0
    private var wakeAtMs: UInt64 = .max
    /// Granted operations that have not finished (a demotion waits for them; new ones wait for the demotion).
    private var running: Set<OperationID> = []
    private var gateClosed = false
    private var demotion: Demotion?

    /// A demotion handed to the executor: it runs between rounds, when no granted operation is running.
    private final class Demotion {
        let body: () throws -> RecoveredState
        var done = false
        var error: Error?
        init(_ body: @escaping () throws -> RecoveredState) { self.body = body }
    }

    /// Actions of core steps not performed yet, in step order. Steps happen under `condition` on any thread (a
    /// FUSE thread steps its own request and finish: no thread hop when the core grants at once); only the
    /// executor performs actions, in this order.
    private var queued: [Action] = []
    private var fastGrant: [Action] = []

    // Executor-only state.
    private var pending: [Event] = []
    private var persistToken: CompletionToken?
    private var syncedWrites: [(CompletionToken, Version)] = []
    private var syncInodes: Set<UInt64> = []
    /// Tracks restored from the superset (`held`/`contested`) when this process started, until a copy from the peer
    /// has been stored for them. Only these can hold a torn copy: a local write's data reach the data file before
    /// its versions are committed, and a write runs under MOS, whose superset bit is durable before it (hazard 7).
    /// A daemon dying in between leaves new bytes under the old version, which the peer holds with the old bytes;
    /// versions alone never tell the two apart, so here the peer's copy of the SAME version replaces ours (it is
    /// the one committed for that version; equal versions come from one write, so nothing newer is lost).
    private var tornSuspects: Set<Location>

    private let statusLock = NSLock()
    private var snapshot: MirrorShellStatus
    private var connectedSinceMs: UInt64?
    private var droppedSends = 0
    private var storeErrors = 0
    private var persistBatches = 0
    private var metadataSyncs = 0
    private var bytesPushed: UInt64 = 0
    private var bytesReceived: UInt64 = 0
    private var lastError: String?
    private var disconnectedSinceMs: UInt64? = 0

    /// Store actions that failed (ENOSPC, EIO) and are retried every `storeRetryMs`, in order. The core cannot be told
    /// "failed" (it would have to give the location up), and dropping the action wedged the location for good: its
    /// completion never came, so the peer's push was never acknowledged and a later persist's completion claimed
    /// this one's rows durable. A stalled store action is a slow disk to the core, which it tolerates.
    private var stalled: [Action] = []
    /// Locations with a stalled write: a later read or write of one waits behind it (same-location order).
    private var stalledLocations: Set<Location> = []
    private var stalledPersist = false
    private var nextStoreRetryMs: UInt64 = 0
    private var storeRetries = 0
    public static let storeRetryMs: UInt64 = 250

    /// Ticks are milliseconds.
    public static let tickMs: UInt64 = 20

    public init(volume: Volume, config: MirrorConfig, prediction: any PredictionPolicy = StandardPrediction(),
                recovered: RecoveredState, send: @escaping @Sendable (Message, UInt64) -> Bool) {
        self.volume = volume
        self.core = MirrorNode(config: config, prediction: prediction, recovered: recovered)
        self.tornSuspects = Set(recovered.entries.filter { !$0.location.isInodeRecord && ($0.state == .held || $0.state == .contested) }.map(\.location))
        self.send = send
        self.startNs = Self.monotonicNs()
        self.snapshot = MirrorShellStatus(
            core: core.status, uptimeMs: 0, connectedSinceMs: nil, droppedSends: 0, storeErrors: 0, unstampedWrites: 0,
            persistBatches: 0, metadataSyncs: 0, bytesPushed: 0, bytesReceived: 0, lastError: nil, rates: [:])
    }

    static func monotonicNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    var nowMs: UInt64 { (Self.monotonicNs() - startNs) / 1_000_000 }

    public func start() {
        volume.attach(self)
        spawnDetachedThread { self.run() }
    }

    /// Stops the executor; operations still waiting fail with EIO.
    public func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while !stopped { condition.wait() }
        abortWaiters()
        condition.unlock()
    }

    /// Feeds an event from the peer link (any thread).
    public func post(_ event: Event) {
        condition.lock()
        switch event {
        case .connectionUp:
            connectedSinceMs = nowMs
            disconnectedSinceMs = nil
        case .connectionDown:
            connectedSinceMs = nil
            disconnectedSinceMs = disconnectedSinceMs ?? nowMs
        default: break
        }
        inbox.append(event)
        condition.signal()
        condition.unlock()
    }

    // MARK: blocking calls from FUSE threads

    /// Waits until the core grants `items`; returns the operation's id and the versions to stamp.
    func acquire(_ items: [AccessItem], hint: PredictionHint) throws -> (OperationID, [Stamp]) {
        let waiter = Waiter(sinceMs: nowMs)
        condition.lock()
        if stopping {
            condition.unlock()
            throw FSError.io
        }
        let id = OperationID(nextOperation)
        nextOperation += 1
        fastGrant.removeAll(keepingCapacity: true)
        core.step(.operationRequested(OperationRequest(id: id, items: items, hint: hint)), into: &fastGrant)
        if queued.isEmpty, fastGrant.count == 1, case .grant(let granted, let stamps) = fastGrant[0], granted == id {
            // Everything held already: nothing to send, persist or wait for.
            condition.unlock()
            return (id, stamps)
        }
        waiters[id] = waiter
        queued += fastGrant
        condition.signal()
        condition.unlock()
        waiter.semaphore.wait()
        switch waiter.grant {
        case .granted(let stamps)?: return (id, stamps)
        case .failed(let error)?: throw FSError.mirror(String(describing: error))
        case nil: throw FSError.io
        }
    }

    func finish(_ id: OperationID, unwritten: [Location]) {
        condition.lock()
        running.remove(id)
        if gateClosed && running.isEmpty { condition.broadcast() }
        let before = queued.count
        core.step(.operationFinished(id, unwritten: unwritten), into: &queued)
        if queued.count > before { condition.signal() }
        condition.unlock()
    }

    /// Waits until the peer durably holds every version written so far to `locations` (fsync=mirror).
    func flush(_ locations: [Location]) throws {
        let waiter = Waiter(sinceMs: nowMs)
        condition.lock()
        if stopping {
            condition.unlock()
            throw FSError.io
        }
        let id = FlushID(nextFlush)
        nextFlush += 1
        flushWaiters[id] = waiter
        inbox.append(.flushRequested(id, locations))
        condition.signal()
        condition.unlock()
        waiter.semaphore.wait()
        if case .some(.some(let error)) = waiter.flushError { throw FSError.mirror(String(describing: error)) }
    }

    /// Graceful stop (after the FUSE session ended): the core pushes what is out of sync and hands back every
    /// token it holds, so the peer can serve everything alone. Waits until nothing is held or out of sync, at most
    /// `timeoutMs`; false if that did not happen (no peer, or too much to copy in time).
    public func leave(timeoutMs: UInt64) -> Bool {
        post(.leaveRequested)
        let deadline = nowMs + timeoutMs
        while nowMs < deadline {
            let s = status.core
            if !s.connected { return false }
            if s.leaving && s.mosCount == 0 && s.oosCount == 0 { return true }
            usleep(20_000)
        }
        return false
    }

    // MARK: promotion and demotion (Docs/OPERATIONS.md "Losing a node", PROTOCOL.md section 13)

    public enum PromotionError: Error, CustomStringConvertible {
        case peerConnected
        case stopping
        public var description: String {
            switch self {
            case .peerConnected: return "the peer is connected: promote only a node whose peer is gone"
            case .stopping: return "the daemon is stopping"
            }
        }
    }

    /// The operator promoted this node: `record` makes the promotion durable (the store's counters) before the
    /// core serves anything alone. Returns what the peer may hold newer copies of (lost unless it returns).
    public func promote(record: () throws -> Void) throws -> (locations: [Location], truncated: Bool, joiningIncomplete: Bool) {
        condition.lock()
        defer { condition.unlock() }
        if stopping { throw PromotionError.stopping }
        if coreEpoch != 0 || inbox.contains(where: { if case .connectionUp = $0 { return true }; return false }) {
            throw PromotionError.peerConnected
        }
        let losses = core.promotionLosses(limit: Self.maxReportedLosses)
        try record()
        inbox.append(.promoted)
        condition.signal()
        return losses
    }

    public static let maxReportedLosses = 10_000

    /// Gives way to a promoted peer: new operations wait, running ones finish, waiting ones fail (EIO), then the
    /// executor runs `body` (it preserves what this node had not replicated, forgets the mirror state durably and
    /// returns the state to restart from) and restarts the core with it. Blocks until done.
    public func demote(_ body: @escaping () throws -> RecoveredState) throws {
        let d = Demotion(body)
        condition.lock()
        defer { condition.unlock() }
        if stopping { throw PromotionError.stopping }
        gateClosed = true
        demotion = d
        condition.broadcast()
        while !d.done && !stopping { condition.wait() }
        if !d.done { throw PromotionError.stopping }
        if let error = d.error { throw error }
    }

    /// Every operation and flush still waiting fails (EIO). With `condition` held.
    private func abortWaiters() {
        for (_, w) in waiters {
            w.grant = .failed(.aborted)
            w.semaphore.signal()
        }
        waiters.removeAll()
        for (_, w) in flushWaiters {
            w.flushError = .some(.aborted)
            w.semaphore.signal()
        }
        flushWaiters.removeAll()
    }

    /// Executor, with `condition` held, between rounds.
    private func restartForDemotion(_ d: Demotion) {
        abortWaiters()
        // Messages of a refused connection and a join completed by the filler of the forgotten state are void.
        inbox.removeAll {
            switch $0 {
            case .received, .joinCompleted: return true
            default: return false
            }
        }
        // Store actions of the forgotten core waiting for a retry are void with it.
        stalled.removeAll()
        stalledLocations.removeAll()
        stalledPersist = false
        failedBefore.removeAll()
        do {
            let recovered = try d.body()
            coreEpoch = 0
            connectedSinceMs = nil
            core.step(.restarted(recovered), into: &queued)
        } catch {
            d.error = error
            note("demotion failed: \(error)")
        }
        d.done = true
        demotion = nil
        gateClosed = false
        condition.broadcast()
    }

    /// For `twinfs verify`: per location, whether the core may still copy it (out of sync: written here and not
    /// acknowledged, a write running included; or not compared yet, after a crash or while joining): a difference
    /// there is a copy in flight, not a missed one. Maybe-out-of-sync alone is not: it stays while the peer keeps
    /// the token, long after the peer's data arrived (the peer's own out-of-sync bit covers a copy still due).
    func unsettled(_ locations: [Location]) -> [Bool] {
        condition.lock()
        defer { condition.unlock() }
        let joining = core.status.joining
        return locations.map { l in joining || core.state(of: l).outOfSync || core.comparesBeforeServing(l) }
    }

    public var status: MirrorShellStatus {
        statusLock.lock()
        defer { statusLock.unlock() }
        return snapshot
    }

    // MARK: the executor

    private func run() {
        while true {
            condition.lock()
            while inbox.isEmpty && queued.isEmpty && !stopping {
                if demotion != nil && running.isEmpty { break }
                let now = nowMs
                if now >= lastTickMs + Self.tickMs || now >= wakeAtMs { break }
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(Self.tickMs) / 1000))
            }
            if let d = demotion, running.isEmpty, queued.isEmpty, persistToken == nil, syncedWrites.isEmpty, !stopping {
                restartForDemotion(d)
                condition.unlock()
                publishStatus()
                continue
            }
            if stopping {
                stopped = true
                condition.broadcast()
                condition.unlock()
                return
            }
            pending = inbox
            inbox.removeAll(keepingCapacity: true)
            let now = nowMs
            if now >= lastTickMs + Self.tickMs || now >= wakeAtMs {
                lastTickMs = now
                wakeAtMs = .max
                pending.append(.tick(now))
            }
            if !stalled.isEmpty && now >= nextStoreRetryMs {
                // Older than anything queued since: retried first, and re-stalled in order if they fail again.
                nextStoreRetryMs = now + Self.storeRetryMs
                queued.insert(contentsOf: stalled, at: 0)
                storeRetries += stalled.count
                stalled.removeAll()
                stalledLocations.removeAll()
                stalledPersist = false
            }
            // The core is stepped with the condition held: FUSE threads append to the inbox and step their own
            // requests under it.
            drain()
            condition.unlock()
            // Group commit: one metadata flush covers every persist and synced store write of this round.
            if persistToken != nil || !syncedWrites.isEmpty {
                commitDurably()
                condition.lock()
                drain()
                condition.unlock()
            }
            publishStatus()
        }
    }

    /// Performs queued actions and steps pending events (completions that performing produces included) until
    /// both are empty. Called with `condition` held.
    private func drain() {
        var next = 0
        while true {
            if !queued.isEmpty {
                let batch = queued
                queued.removeAll(keepingCapacity: true)
                for action in batch { perform(action) }
                continue
            }
            guard next < pending.count else { break }
            let event = pending[next]
            next += 1
            switch event {
            case .connectionUp(let epoch): coreEpoch = epoch
            case .connectionDown: coreEpoch = 0
            default: break
            }
            core.step(event, into: &queued)
        }
        pending.removeAll(keepingCapacity: true)
        checksums.flush(volume, log: log)
    }

    private func commitDurably() {
        let token = persistToken
        let writes = syncedWrites
        let inodes = syncInodes
        persistToken = nil
        syncedWrites.removeAll()
        syncInodes.removeAll()
        do {
            for ino in inodes { try volume.store.syncData(ino) }
            try volume.syncMetadata()
            metadataSyncs += 1
        } catch {
            // Durability could not be confirmed: say nothing to the core, so nothing is acknowledged on the
            // strength of it; the store error is reported and the next round retries.
            note("store sync failed: \(error)")
            persistToken = token
            syncedWrites = writes
            syncInodes = inodes
            return
        }
        if let token { pending.append(.persistDone(token)) }
        for (t, v) in writes { pending.append(.storeWriteDone(t, stored: v)) }
    }

    private func perform(_ action: Action) {
        switch action {
        case .send(let message):
            if case .push(let p) = message { bytesPushed += UInt64(p.payload.bytes.count) }
            if !send(message, coreEpoch) { droppedSends += 1 }
        case .storeRead(_, let location) where stalledLocations.contains(location):
            stalled.append(action)
        case .storeWrite(_, let location, _, _, _, _) where stalledLocations.contains(location):
            stalled.append(action)
        case .persist where stalledPersist:
            stalled.append(action)
        case .storeRead(let token, let location):
            do {
                let image = try volume.mirrorRead(location)
                checksums.sent(location, image)
                pending.append(.storeReadDone(token, Payload(image.bytes), Self.version(image.version)))
                succeeded(token)
            } catch {
                // The core needs an answer; the store cannot give one. Report it and let the location wait: the
                // core times the peer's operation out rather than ship something wrong.
                stall(action, location, "store read of \(location) failed: \(error)")
            }
        case .storeWrite(let token, let location, let payload, let version, let onlyIfNewer, let sync):
            do {
                let image = LocationImage(version: Self.storeVersion(version), bytes: payload.bytes)
                let stored = try volume.mirrorApply(location, image, force: !onlyIfNewer,
                                                    replacingEqual: tornSuspects.contains(location))
                tornSuspects.remove(location)
                if stored == image.version { checksums.stored(location, image) }
                invalidate?(location.ino)
                if sync {
                    syncInodes.insert(location.ino)
                    syncedWrites.append((token, Self.version(stored)))
                } else {
                    pending.append(.storeWriteDone(token, stored: Self.version(stored)))
                }
                bytesReceived += UInt64(payload.bytes.count)
                succeeded(token)
            } catch {
                stall(action, location, "store write of \(location) failed: \(error)")
            }
        case .persist(let token, let batch):
            do {
                let harden = Set(batch.hardenFirst.filter { !$0.isInodeRecord }.map(\.ino))
                for ino in harden { try volume.store.syncData(ino) }
                try volume.mirrorPersist(
                    batch.entries.map { Store.MirrorStateRow(ino: $0.location.ino, slot: $0.location.slot, state: $0.state.rawValue) },
                    clockReservation: batch.clockReservation, joinCompleted: batch.joinCompleted, sole: batch.sole)
                persistBatches += 1
                if persistToken.map({ $0 < token }) ?? true { persistToken = token }
                succeeded(token)
            } catch {
                stall(action, nil, "persisting mirror state failed: \(error)")
            }
        case .invalidateCaches(let location):
            invalidate?(location.ino)
        case .grant(let id, let stamps):
            if let w = waiters.removeValue(forKey: id) {
                running.insert(id)
                w.grant = .granted(stamps)
                w.semaphore.signal()
            }
        case .fail(let id, let error):
            if let w = waiters.removeValue(forKey: id) {
                w.grant = .failed(error)
                w.semaphore.signal()
            }
        case .flushDone(let id):
            if let w = flushWaiters.removeValue(forKey: id) {
                w.flushError = .some(nil)
                w.semaphore.signal()
            }
        case .flushFailed(let id, let error):
            if let w = flushWaiters.removeValue(forKey: id) {
                w.flushError = .some(error)
                w.semaphore.signal()
            }
        case .wakeAt(let tick):
            wakeAtMs = min(wakeAtMs, tick)
        }
    }

    /// Keeps a failed store action for a retry; only its first failure is an error (retries are counted).
    private func stall(_ action: Action, _ location: Location?, _ message: String) {
        if let location { stalledLocations.insert(location) } else { stalledPersist = true }
        if stalled.isEmpty { nextStoreRetryMs = nowMs + Self.storeRetryMs }
        stalled.append(action)
        if let t = Self.storeToken(action), failedBefore.insert(t).inserted { note(message + " (retried every \(Self.storeRetryMs) ms)") }
    }
    /// Tokens of store actions that failed at least once and have not succeeded since (bounded by `stalled`).
    private var failedBefore: Set<CompletionToken> = []

    private func succeeded(_ token: CompletionToken) {
        if !failedBefore.isEmpty, failedBefore.remove(token) != nil { log?("store action \(token) succeeded after a retry") }
    }

    private static func storeToken(_ action: Action) -> CompletionToken? {
        switch action {
        case .storeRead(let t, _), .storeWrite(let t, _, _, _, _, _), .persist(let t, _): return t
        default: return nil
        }
    }

    private func note(_ message: String) {
        storeErrors += 1
        lastError = message
        log?(message)
    }

    private func publishStatus() {
        condition.lock()
        let core = self.core.status
        let since = connectedSinceMs
        let disconnectedSince = disconnectedSinceMs
        let now = nowMs
        let oldestOperation = waiters.values.lazy.map(\.sinceMs).min()
        let oldestFlush = flushWaiters.values.lazy.map(\.sinceMs).min()
        let blocked = (waiters.count, flushWaiters.count)
        condition.unlock()
        let s = MirrorShellStatus(
            core: core, uptimeMs: nowMs, connectedSinceMs: since, droppedSends: droppedSends, storeErrors: storeErrors,
            unstampedWrites: volume.store.unstampedWrites, persistBatches: persistBatches, metadataSyncs: metadataSyncs,
            bytesPushed: bytesPushed, bytesReceived: bytesReceived, lastError: lastError, rates: rates(core.counters),
            disconnectedSinceMs: disconnectedSince, blockedOperations: blocked.0,
            oldestBlockedOperationMs: oldestOperation.map { now - min($0, now) } ?? 0, blockedFlushes: blocked.1,
            oldestBlockedFlushMs: oldestFlush.map { now - min($0, now) } ?? 0, stalledStoreActions: stalled.count,
            storeRetries: storeRetries)
        statusLock.lock()
        snapshot = s
        statusLock.unlock()
    }

    public static let rateWindowMs: UInt64 = 5_000
    private var rateBase: (ms: UInt64, counters: MirrorCounters)?
    private var lastRates: [String: Double] = ["marks": 0, "pulls": 0, "pushes": 0, "releases": 0]

    private func rates(_ c: MirrorCounters) -> [String: Double] {
        let now = nowMs
        guard let base = rateBase else {
            rateBase = (now, c)
            return lastRates
        }
        let elapsed = now - base.ms
        if elapsed >= Self.rateWindowMs {
            let seconds = Double(elapsed) / 1000
            let b = base.counters
            lastRates = [
                "marks": Double(c.marksSent - b.marksSent) / seconds, "pulls": Double(c.pullsSent - b.pullsSent) / seconds,
                "pushes": Double(c.pushesSent - b.pushesSent) / seconds,
                "releases": Double(c.releasesSent - b.releasesSent) / seconds,
            ]
            rateBase = (now, c)
        }
        return lastRates
    }

    // MARK: versions

    /// Store versions are `lamport << 16 | node index`; a pair's node indexes are its core node ids (1 and 2).
    static func storeVersion(_ v: Version) -> UInt64 { v.counter << 16 | UInt64(v.node.raw) }
    static func version(_ stored: UInt64) -> Version {
        Version(counter: stored >> 16, node: NodeID(UInt8(truncatingIfNeeded: stored & 0xFFFF)))
    }
}
