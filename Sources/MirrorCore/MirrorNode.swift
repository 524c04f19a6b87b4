// MirrorCore — the per-node protocol state machine (Docs/PROTOCOL.md).
// Owns: bitmaps OOS/MOOS/MOS, local location locks, in-flight requests; turns Events into Actions.
// Must never: perform I/O, read a clock, spawn threads or draw random numbers; every input arrives as an Event.

/// One node's protocol core. Feed it events with `step`; execute the returned actions in order.
public final class MirrorNode {
    public let config: MirrorConfig
    var rules: ProtocolRules { config.rules }
    var prediction: any PredictionPolicy

    // MARK: state

    var bits = LocationBits()
    var now: Tick = 0
    /// Lamport counter; every version this node stamps is <= `clockReserved`, which is durable.
    var clock: UInt64 = 0
    var clockReserved: UInt64 = 0
    var reservationInFlight: (value: UInt64, token: UInt64)?
    var incarnation: UInt64 = 0

    var connected = false
    var epoch: UInt64 = 0
    var peerHello: Hello?

    var nextTokenRaw: UInt64 = 0
    /// Highest persist token known durable (persistDone covers every earlier persist).
    var durableToken: UInt64 = 0
    var lastPersistToken: UInt64 = 0
    /// Locations whose persisted state changed since the last persist action.
    var dirty: [Location] = []
    var wantReservation: UInt64?
    /// Superset written for a pending mark: a write under the token waits until this persist is durable.
    var supersetPending: [Location: UInt64] = [:]
    /// The same entries in persist order, so they are dropped when durable (the table stays empty on the hot path).
    var supersetQueue: [(token: UInt64, locations: [Location])] = []

    var ops: [OperationID: Op] = [:]
    var locks: [Location: Lock] = [:]
    var netWaiters: [Location: [OperationID]] = [:]
    var durableWaiters: [OperationID] = []

    var outMarks: [UInt64: OutMark] = [:]
    var markOf: [Location: UInt64] = [:]
    /// Granted with the peer's data, which is landing in our store; the token is ours once it has landed (unless the
    /// peer asks for it back first, which abandons the grant).
    var landing: [Location: UInt64] = [:]
    var nextMarkID: UInt64 = 1  // high bits: incarnation, so ids never repeat across restarts
    /// Outstanding pulls: location -> id of the latest pull whose answer may clear MOOS.
    var pulls: [Location: UInt64] = [:]
    var nextPullID: UInt64 = 1
    /// MOS acquired without the peer's possibly newer data, for a full overwrite by `takeoverFor[L]` (hazard 6).
    var takeover: [Location: OperationID] = [:]
    var takeoverRequested: [Location: OperationID] = [:]

    var reads: [UInt64: PendingRead] = [:]
    var writes: [UInt64: PendingWrite] = [:]
    var receiving: [Location: Int] = [:]
    var inFlight: [Location: Sent] = [:]
    var pushesInFlight = 0
    var pushQueue = InodeQueue()
    var lastPumpTick: Tick = 0

    var deferred: [Location: [Deferred]] = [:]
    var replies: [UInt64: PendingReply] = [:]
    /// Locations granted to the peer whose reply is not sent yet (waiting for durability). Our own retry for them
    /// waits: the peer is about to hold the token, and retrying at once would only spin on its refusals.
    var grantsUnsent: [Location: Int] = [:]
    /// Pull answers (and prefetches) read from the store but not sent yet. A mark for such a location waits: sent
    /// first, it would reach the peer before the answer, whose MOOS-clearing would then undo the mark's MOOS.
    var answering: [Location: Int] = [:]
    var nextReplyKey: UInt64 = 0
    /// Locations where a local read lost a pull answer to a grant of ours: the peer's next marks for them wait for
    /// the read (`starvedReadAwaitsAnswer`, finding 7). Dropped when an answer clears MOOS or when no read waits
    /// there any more (lock release), so bounded by the locations local reads wait for.
    var starvedReads: Set<Location> = []

    var flushes: [FlushID: Flush] = [:]
    var flushNeeds: [Location: Int] = [:]

    var hot: Set<Location> = []
    var hotPrevious: Set<Location> = []
    var hotRotatedAt: Tick = 0
    var releaseScan: [UInt64] = []

    var oosNonEmptySince: Tick = 0
    var restoredSuperset = false
    /// Locations restored from the persisted superset whose copy has not yet been compared with the peer's (finding
    /// 10): a power loss may have undone our newer writes, which the peer holds but believes we hold too. Until data
    /// from the peer land, every pull and mark for them asks for the peer's data, a release does not clear their
    /// MOOS, and their superset bit stays persisted, whatever an ack does to OOS. O(restored superset).
    var uncompared: Set<Location> = []
    /// `Event.leaveRequested` was stepped: every in-sync, unused MOS location is released at once (not only cold
    /// ones), and no locations are predicted, so the peer ends up holding no MOOS for this node.
    var leaving = false
    /// Locations released on the current connection, and those released on a connection that went down (the
    /// `release` may have been lost with it): re-sent after the next `connectionUp` if still released, so that a lost
    /// release never leaves the peer with MOOS that nobody clears (which a leaving node's peer could not serve).
    /// Bounded by `maxTrackedReleases`; beyond that a lost release only costs the peer a pull.
    var releasedOnConnection: [Location] = []
    var releaseResend: [Location] = []
    var maxTrackedReleases: Int { max(1, config.maxMarkItems) * 256 }
    /// Locations whose token (MOS or a takeover) this node lost other than by a release (a grant to the peer, a
    /// deferred answer, a revoked or unused takeover), or that the peer granted after we stopped waiting. The peer's MOOS there may outlive our
    /// token: an answer clears it only if it answers the peer's latest pull. Harmless while we are around (the peer
    /// pulls, we answer); a leaving node releases them explicitly. Bounded like the releases above; pruned when the
    /// token comes back or the release is sent.
    var answeredAway: Set<Location> = []

    /// Promoted (section 13): the peer is gone for good, every operation is served locally. Ends at `connectionUp`.
    var sole = false
    /// Grants under sole mode wait until the batch that recorded it (this persist token) is durable: a restart before
    /// that would come back with the peer's MOOS, and a read served meanwhile would have ignored it.
    var soleToken: UInt64 = 0
    /// Sole-mode change the next persist batch must carry (`PersistBatch.sole`).
    var soleChange: Bool?
    /// Locations whose MOS a sole write took locally: their `held` must be durable before the write (hazard 7).
    var soleTaken: [Location] = []
    /// Rejoining after a demotion (section 13): a location not compared since the join began holds an untrusted copy.
    var adopting = false
    /// `joinCompleted` arrived while adopting but untrusted locations with explicit state (or in use) remained: the
    /// completion waits until their forced pulls have landed (`adoptPending`), so that none becomes an ordinary
    /// uncompared location whose stale, higher version would beat the peer's copy.
    var joinCompletionDeferred = false
    var adoptPending: Set<Location> = []
    /// Extra `hardenFirst` locations for the next batch (the promotion's unsynced backlog).
    var hardenAlso: [Location] = []
    /// A connection came up while sole: it is used once the batch ending sole mode (token) is durable; the peer's
    /// messages meanwhile wait here (bounded; beyond it they are dropped and the peer's waiting operations time out).
    var soleEnding: (epoch: UInt64, token: UInt64)?
    var soleQueue: [Message] = []
    var maxSoleQueue: Int { max(1, config.maxMarkItems) * 1024 }

    func noteHandedBack(_ l: Location) {
        if answeredAway.count < maxTrackedReleases { answeredAway.insert(l) }
    }
    var nextWake: Tick?
    var counters = MirrorCounters()
    /// Actions of the current step (swapped with the caller's buffer).
    var out: [Action] = []

    // MARK: internal records

    struct Op {
        enum Phase { case lockWait, netWait, durableWait, granted }
        let id: OperationID
        var items: [AccessItem]
        var hint: PredictionHint
        var index = 0
        var holdsCurrent = false
        var phase = Phase.lockWait
        var startTick: Tick
        var waitedOn: Location?
        var roundTrips = 0
    }
    struct Lock {
        var holders: [OperationID] = []
        var exclusive = false
        var waiters: [OperationID] = []
    }
    struct OutMark {
        var items: [MarkItem]
        var remaining: Int
        /// Items that asked for the granter's data (partial writes under MOOS); usually empty.
        var needData: Set<Location> = []
    }
    enum PendingRead {
        // `gen`: the location's write generation when the read was issued (see `Sent`).
        case push(Location, epoch: UInt64, gen: UInt64)
        case answer(Location, pullID: UInt64, epoch: UInt64, gen: UInt64)
        case markData(Location, reply: UInt64, epoch: UInt64, gen: UInt64)
    }
    enum WriteKind { case answer(clearsMOOS: Bool), push(durable: Bool), markData(markID: UInt64) }
    struct PendingWrite {
        var location: Location; var version: Version; var kind: WriteKind
        /// A local write of the location finished while this one was in the store: the store then holds our newer
        /// data, so this write's completion must not clear OOS (findings 11 and 12: the store can report the
        /// peer's version as held although our newer write is what the peer lacks).
        var localWriteSince = false
    }
    /// Data sent to the peer and not yet acknowledged.
    struct Sent {
        var lastSent: Version?
        /// Local writes finished since this record exists, and the value of that count when `lastSent` was read: an
        /// ack clears OOS only if no write finished after the acknowledged copy was read (hazard 2).
        var gen: UInt64 = 0
        var sentGen: UInt64 = 0
        var reading = 0
        var pushing = false
    }
    enum Deferred { case pull(id: UInt64, forceData: Bool), mark(id: UInt64, item: MarkItem) }
    struct PendingReply {
        var id: UInt64
        var granted: [MarkGrant] = []
        var refused: [Location] = []
        var persistToken: UInt64 = 0
        var readsOutstanding = 0
        var epoch: UInt64
    }
    struct Flush { var need: Set<Location>; var start: Tick }

    // MARK: public surface

    /// - Parameter recovered: durable state found at start (use `.empty` for a fresh volume).
    public init(config: MirrorConfig, prediction: any PredictionPolicy = StandardPrediction(),
                recovered: RecoveredState = .empty) {
        self.config = config
        self.prediction = prediction
        recover(recovered)
    }

    /// Processes one event and returns the actions to execute, in order.
    public func step(_ event: Event) -> [Action] {
        var buf: [Action] = []
        step(event, into: &buf)
        return buf
    }

    /// Same as `step(_:)`, appending to a caller-owned buffer (no allocation per event once it has grown).
    public func step(_ event: Event, into buffer: inout [Action]) {
        swap(&out, &buffer)
        defer { swap(&out, &buffer) }
        switch event {
        case .operationRequested(let r): requestOperation(r)
        case .operationFinished(let id, let unwritten): finishOperation(id, unwritten: unwritten)
        case .flushRequested(let id, let locs): requestFlush(id, locs)
        case .received(let m):
            if connected { receive(m) } else if soleEnding != nil && soleQueue.count < maxSoleQueue { soleQueue.append(m) }
        case .connectionUp(let e): connectionUp(e)
        case .connectionDown: connectionDown()
        case .tick(let t): tick(t)
        case .persistDone(let t): persistDone(t.raw)
        case .storeReadDone(let t, let p, let v): readDone(t.raw, p, v)
        case .storeWriteDone(let t, let stored): writeDone(t.raw, stored)
        case .restarted(let r): restart(r)
        case .joinCompleted: completeJoin()
        case .leaveRequested: leaving = true
        case .promoted: promote()
        }
        // A pending flush (or leaving) makes the background copy run now, whatever its delay.
        if connected && (config.pushDelayTicks == 0 || now &- lastPumpTick >= config.pushDelayTicks
                         || !flushNeeds.isEmpty || leaving) { pumpPushes() }
        if leaving && connected && (bits.mosCount > 0 || !answeredAway.isEmpty) { releaseCold() }
        if connected && config.pushDelayTicks > 0 && !pushQueue.isEmpty {
            scheduleWake(lastPumpTick &+ config.pushDelayTicks)
        }
        flushPersist()
    }

    /// The token and OOS bit of one location.
    public func state(of location: Location) -> LocationState { bits.state(location) }

    /// Counts, ages and counters.
    public var status: MirrorStatus {
        MirrorStatus(oosCount: bits.oosCount, moosCount: bits.moosCount, mosCount: bits.mosCount,
                     oldestOOSAgeTicks: bits.oosCount == 0 ? 0 : now &- oosNonEmptySince, connected: connected,
                     activeOperations: ops.count, inFlightPushes: pushesInFlight, pendingFlushes: flushes.count,
                     counters: counters, joining: bits.joining, leaving: leaving, sole: sole, adopting: adopting)
    }

    /// Bytes held by the dense bitmaps (the bulk; small dictionaries for in-flight state come on top).
    public var bitmapBytes: Int { bits.wordBytes }

    // MARK: persistence helpers

    func newToken() -> UInt64 { nextTokenRaw += 1; return nextTokenRaw }

    /// The durable 2-bit state a location must have, derived from the volatile state (PROTOCOL.md "Persisted state").
    func persisted(_ l: Location) -> PersistedState {
        switch bits.token(l) {
        case .mos: return takeover.at(l) != nil ? .contested : .held
        case .moos:
            if bits.oos(l) || markOf.at(l) != nil || landing.at(l) != nil { return .contested }
            if inUncomparedSet(l) { return .contested }
            // Joining: a MOOS never compared is what a missing entry restores (the joining default), so it needs no
            // entry; `completeJoin` writes those still uncompared as `contested` before the default ends.
            if bits.joining && !bits.isCompared(l) { return .none }
            return .moos
        case .none:
            if bits.oos(l) || markOf.at(l) != nil || landing.at(l) != nil || isUncompared(l) { return .held }
            // Adopting: a compared copy must stay trusted across a restart (a missing entry would make it untrusted
            // again, and the peer may since have lost its own copy): `moos` restores as compared (section 13).
            if adopting && bits.joining && bits.isCompared(l) { return .moos }
            return .none
        }
    }

    @inline(__always) func inUncomparedSet(_ l: Location) -> Bool { !uncompared.isEmpty && uncompared.contains(l) }

    /// Our copy may be behind the peer's and must fetch its data before serving: restored from the superset
    /// (`uncompared`), or, while joining, never compared since the join began.
    @inline(__always) func isUncompared(_ l: Location) -> Bool {
        inUncomparedSet(l) || (bits.joining && !bits.isCompared(l))
    }

    /// Data from the peer have landed for `l`: our copy is compared (the newer version won in the store).
    func compared(_ l: Location) {
        guard isUncompared(l) else { return }
        let before = persisted(l)
        settleCompared(l, keepMOOS: true)
        touch(l, before)
    }

    /// Ends "uncompared" without persisting (the caller touches). `keepMOOS`: see `LocationBits.setCompared`.
    func settleCompared(_ l: Location, keepMOOS: Bool) {
        if inUncomparedSet(l) { uncompared.remove(l) }
        if bits.joining { bits.setCompared(l, keepMOOS: keepMOOS) }
    }

    @inline(__always) func touch(_ l: Location, _ before: PersistedState) {
        if persisted(l) != before { dirty.append(l) }
    }

    /// Emits the pending persist batch now; returns a token whose durability covers every change so far.
    @discardableResult
    func flushPersist(joinCompleted: Bool = false) -> UInt64 {
        if dirty.isEmpty && wantReservation == nil && !joinCompleted && soleChange == nil { return lastPersistToken }
        let t = newToken()
        var entries: [PersistEntry] = []
        entries.reserveCapacity(dirty.count)
        var harden: [Location] = []
        for l in dirty {
            let v = persisted(l)
            entries.append(PersistEntry(l, v))
            if v == .none || v == .moos { harden.append(l) }
        }
        dirty.removeAll(keepingCapacity: true)
        if !hardenAlso.isEmpty { harden.append(contentsOf: hardenAlso); hardenAlso = [] }
        if let r = wantReservation { reservationInFlight = (r, t); wantReservation = nil }
        out.append(.persist(CompletionToken(t), PersistBatch(
            entries: entries, clockReservation: reservationInFlight?.token == t ? reservationInFlight!.value : nil,
            hardenFirst: harden, joinCompleted: joinCompleted, sole: soleChange)))
        soleChange = nil
        lastPersistToken = t
        return t
    }

    func reserveClock() {
        guard reservationInFlight == nil && wantReservation == nil else { return }
        wantReservation = max(clock, clockReserved) + config.clockReservationStep
    }

    func observe(clock c: UInt64) { if c > clock { clock = c } }

    // MARK: bit changes with bookkeeping

    func setOOS(_ l: Location, _ v: Bool) {
        let wasEmpty = bits.oosCount == 0
        if bits.setOOS(l, v) == v { return }
        if v {
            if wasEmpty { oosNonEmptySince = now }
            pushQueue.insert(l.ino)
        }
    }

    func enqueuePush(_ l: Location) {
        if l.slot < bits.pushCursor(l.ino) { bits.setPushCursor(l.ino, l.slot) }
        pushQueue.insert(l.ino)
    }

    // MARK: local operations

    func requestOperation(_ r: OperationRequest) {
        precondition(ops[r.id] == nil, "operation id reused while live")
        var merged = r.items
        if merged.count > 1 {
            let items = merged.sorted { $0.location < $1.location }
            merged.removeAll(keepingCapacity: true)
            for it in items {
                if let last = merged.last, last.location == it.location {
                    // Any mix of accesses needs the current data and the token: a partial write.
                    if last.access != it.access { merged[merged.count - 1].access = .writePartial }
                } else { merged.append(it) }
            }
        }
        ops[r.id] = Op(id: r.id, items: merged, hint: r.hint, startTick: now)
        requestEarly(r.id)
        advance(r.id)
    }

    /// Asks the peer for every location the operation lacks, in one mark and one pull, before acquiring in order:
    /// a write spanning tracks and the inode costs one round trip, not one per location.
    func requestEarly(_ id: OperationID) {
        guard !sole, let op = ops[id] else { return }
        var pullNeed: [Location] = []
        var markNeed: [AccessItem] = []
        for it in op.items {
            let tok = bits.token(it.location)
            if it.access.isWrite && adoptsPeerCopy(it.location) {
                // Adopting: the stale copy is replaced by the peer's before any write (compare first).
                if pulls[it.location] == nil && grantsUnsent.at(it.location) == nil { pullNeed.append(it.location) }
            } else if it.access.isWrite {
                if tok != .mos && markOf.at(it.location) == nil && grantsUnsent.at(it.location) == nil
                    && answering.at(it.location) == nil { markNeed.append(it) }
            } else if tok == .moos && pulls[it.location] == nil && grantsUnsent.at(it.location) == nil {
                pullNeed.append(it.location)
            }
        }
        if !markNeed.isEmpty { sendMark(markNeed, hint: op.hint, for: id) }
        if !pullNeed.isEmpty { sendPull(pullNeed) }
    }

    func ready(_ l: Location, _ access: Access) -> Bool {
        if let n = receiving.at(l), n > 0 { return false }
        let tok = bits.token(l)
        switch access {
        case .read: return tok != .moos && takeover.at(l) == nil
        case .writePartial: return tok == .mos && takeover.at(l) == nil
        case .writeFull: return tok == .mos
        }
    }

    func canLock(_ l: Location, _ access: Access) -> Bool {
        guard let lk = locks.at(l) else { return true }
        if !lk.waiters.isEmpty { return false }
        if lk.holders.isEmpty { return true }
        return !access.isWrite && !lk.exclusive
    }

    func takeLock(_ l: Location, _ id: OperationID, _ access: Access) {
        locks[l, default: Lock()].holders.append(id)
        if access.isWrite { locks[l]!.exclusive = true }
    }

    /// Acquires the operation's locations in global order; grants when all are held and ready.
    func advance(_ id: OperationID) {
        guard var op = ops[id], op.phase != .granted else { return }
        while op.index < op.items.count {
            let it = op.items[op.index]
            let l = it.location
            // Someone else's takeover not yet reached by its owner goes back to MOOS; once the owner holds the
            // lock (it may be writing) we simply wait for the lock like any other operation.
            if let owner = takeover.at(l), owner != id, locks.at(l)?.holders.contains(owner) != true {
                revokeTakeover(l)
            }
            if !op.holdsCurrent {
                guard canLock(l, it.access) else {
                    locks[l, default: Lock()].waiters.append(id)
                    op.phase = .lockWait
                    ops[id] = op
                    return
                }
                takeLock(l, id, it.access)
                op.holdsCurrent = true
            }
            if ready(l, it.access) {
                op.index += 1
                op.holdsCurrent = false
                continue
            }
            if sole {
                // Nobody else can hold the token or newer data: take it here (persisted `held` before the write).
                if it.access.isWrite && bits.token(l) != .mos { takeTokenAlone(l) }
                if ready(l, it.access) {
                    op.index += 1
                    op.holdsCurrent = false
                    continue
                }
                // Only a store write still landing (received before the promotion) holds it: its completion wakes us.
                op.phase = .netWait
                netWaiters[l, default: []].append(id)
                ops[id] = op
                return
            }
            // Not ready: make sure a request is pending, then wait while holding only locations before `l`.
            if it.access.isWrite && adoptsPeerCopy(l) {
                if pulls[l] == nil && grantsUnsent.at(l) == nil { sendPull([l]) }
            } else if it.access.isWrite {
                if markOf.at(l) == nil && bits.token(l) != .mos && grantsUnsent.at(l) == nil && answering.at(l) == nil {
                    sendMark([it], hint: op.hint, for: id)
                }
            } else if bits.token(l) == .moos && pulls[l] == nil && grantsUnsent.at(l) == nil {
                sendPull([l])
            }
            if op.waitedOn != l { op.waitedOn = l; op.roundTrips += 1 }
            if op.phase != .netWait {
                op.phase = .netWait
                scheduleWake(op.startTick &+ config.peerTimeoutTicks)
            }
            netWaiters[l, default: []].append(id)
            ops[id] = op
            return
        }
        ops[id] = op
        tryGrant(id)
    }

    func tryGrant(_ id: OperationID) {
        guard var op = ops[id] else { return }
        if !soleTaken.isEmpty {
            // Tokens taken alone persist `held` like a mark's superset; the write waits for it (hazard 7).
            let t = flushPersist()
            if rules.persistSupersetBeforeWrite {
                for l in soleTaken { supersetPending[l] = t }
                supersetQueue.append((t, soleTaken))
            }
            soleTaken.removeAll()
        }
        var waiting = sole && durableToken < soleToken
        var writes = false
        for it in op.items where it.access.isWrite {
            writes = true
            if let t = supersetPending.at(it.location) {
                if durableToken >= t { supersetPending[it.location] = nil } else { waiting = true }
            }
        }
        if writes && clock &+ 1 > clockReserved {
            reserveClock()
            waiting = true
        }
        if waiting {
            if op.phase != .durableWait { op.phase = .durableWait; durableWaiters.append(id) }
            ops[id] = op
            return
        }
        var stamps: [Stamp] = []
        if writes {
            clock += 1
            let v = Version(counter: clock, node: config.node)
            stamps.reserveCapacity(op.items.count)
            for it in op.items where it.access.isWrite {
                // Paired with `ready`: a write is granted only under the token, a read only without MOOS.
                assert(bits.token(it.location) == .mos, "write granted without MOS")
                stamps.append(Stamp(it.location, v))
            }
            if clock &+ config.clockReservationStep / 2 > clockReserved { reserveClock() }
        }
        for it in op.items {
            assert(it.access.isWrite || bits.token(it.location) != .moos, "read granted under MOOS")
            if config.release.enabled { hot.insert(it.location) }
        }
        op.phase = .granted
        ops[id] = op
        counters.operationsGranted += 1
        if op.roundTrips > 0 { counters.operationsWithRoundTrip += 1; counters.roundTrips += op.roundTrips }
        out.append(.grant(id, stamps: stamps))
    }

    func finishOperation(_ id: OperationID, unwritten: [Location]) {
        guard let op = ops[id], op.phase == .granted else { return }
        for it in op.items where it.access.isWrite {
            let l = it.location
            let before = persisted(l)
            if unwritten.contains(l) {
                if takeover.at(l) != nil { takeover[l] = nil; bits.setToken(l, .moos); noteHandedBack(l); wake(l) }
            } else {
                takeover[l] = nil
                settleCompared(l, keepMOOS: true)  // our new data supersede whatever the peer holds
                setOOS(l, true)
                if inFlight.at(l) != nil { inFlight[l]!.gen += 1 }
                for (t, w) in writes where w.location == l { writes[t]!.localWriteSince = true }
                enqueuePush(l)
            }
            touch(l, before)
        }
        endOperation(op)
        for it in op.items where it.access.isWrite { wake(it.location) }
    }

    /// Drops the operation and its locks (granted or not), then serves what waited on those locks.
    func endOperation(_ op: Op) {
        ops[op.id] = nil
        if !takeoverRequested.isEmpty {
            for it in op.items where takeoverRequested[it.location] == op.id { takeoverRequested[it.location] = nil }
        }
        if op.phase != .granted {
            for it in op.items where takeover[it.location] == op.id {
                // The full overwrite never happened: our copy may be older than the peer's (hazard 6).
                let before = persisted(it.location)
                takeover[it.location] = nil
                bits.setToken(it.location, .moos)
                noteHandedBack(it.location)
                touch(it.location, before)
                // Nobody holds the token now, and our MOOS would stay until a read: compare now, so that the pair
                // does not keep MOOS on both sides (a leaving peer could not answer later).
                if connected && pulls[it.location] == nil && grantsUnsent.at(it.location) == nil {
                    sendPull([it.location])
                }
            }
        }
        var released: [Location] = []
        let heldCount = op.index + (op.holdsCurrent ? 1 : 0)
        for i in 0..<heldCount {
            let l = op.items[i].location
            guard var lk = locks[l] else { continue }
            lk.holders.removeAll { $0 == op.id }
            if lk.holders.isEmpty { lk.exclusive = false }
            locks[l] = lk
            released.append(l)
        }
        if op.phase == .lockWait && op.index < op.items.count {
            let l = op.items[op.index].location
            locks[l]?.waiters.removeAll { $0 == op.id }
            released.append(l)
        }
        for l in released { afterUnlock(l) }
    }

    /// Peer requests that waited for a location come first (so two nodes alternate instead of one starving), then
    /// local operations queued on the lock.
    func afterUnlock(_ l: Location) {
        // The background copy skips locked locations; this is where it gets them back.
        if bits.oos(l) { enqueuePush(l) }
        // The starved read is done (or no longer next for `l`): forget it, so the set stays bounded by waiting reads.
        if !starvedReads.isEmpty && starvedReads.contains(l) && !readAwaitsAnswer(l) { starvedReads.remove(l) }
        serveDeferred(l)
        guard var lk = locks[l] else { return }
        if lk.holders.isEmpty && lk.waiters.isEmpty { locks[l] = nil; return }
        var woken: [OperationID] = []
        while let w = lk.waiters.first, let op = ops[w] {
            let acc = op.items[op.index].access
            if acc.isWrite {
                guard lk.holders.isEmpty else { break }
                lk.waiters.removeFirst(); lk.holders.append(w); lk.exclusive = true; woken.append(w)
                break
            }
            guard !lk.exclusive else { break }
            lk.waiters.removeFirst(); lk.holders.append(w); woken.append(w)
        }
        lk.waiters.removeAll { ops[$0] == nil }
        locks[l] = lk
        for w in woken {
            ops[w]?.holdsCurrent = true
            advance(w)
        }
    }

    /// Peer requests deferred for `l`, once nothing holds them back (a local operation past `l`, a landing adoption).
    func serveDeferred(_ l: Location) {
        guard let ds = deferred.at(l), !blocked(l), !adoptionLanding(l) else { return }
        deferred[l] = nil
        let holdMarks = starvedReadAwaitsAnswer(l)
        for d in ds {
            switch d {
            case .pull(let id, let force):
                // A deferred pull may predate the peer's grant that gave us this MOS: its answer then cannot
                // clear the peer's MOOS (race 1). An answer to a pull received while we held the token can.
                let held = bits.token(l) == .mos
                answerPull(l, pullID: id, forceData: force)
                if held && bits.token(l) != .mos { noteHandedBack(l) }
            case .mark(let id, let item):
                if holdMarks { deferred[l, default: []].append(d); continue }
                var reply = PendingReply(id: id, epoch: epoch)
                grantOrRefuse(item, &reply)
                finishReply(reply)
            }
        }
    }

    /// Adopting: the peer's copy of an untrusted location is being written; what we would say about our copy now (an
    /// empty version-zero answer) would be wrong once it has landed, so peer requests wait for the landing.
    @inline(__always) func adoptionLanding(_ l: Location) -> Bool {
        adopting && receiving.at(l) != nil && adoptsPeerCopy(l)
    }

    /// Writes the peer's data for `l` (the caller recorded `writes[t]`). Adopting, the first copy to land on an
    /// untrusted location replaces ours whatever the versions (section 13); later ones, issued after it (the store
    /// applies writes to one location in issue order), compete by version with the peer's data as usual.
    func issuePeerWrite(_ t: UInt64, _ l: Location, _ p: Payload, _ v: Version) {
        let onlyIfNewer = rules.ignoreStalePushes && !(adoptsPeerCopy(l) && receiving.at(l) == nil)
        receiving[l, default: 0] += 1
        out.append(.storeWrite(CompletionToken(t), l, p, v, onlyIfNewer: onlyIfNewer, sync: true))
    }

    /// A location is blocked for the peer while a local operation holds it and is past it (granted, waiting for
    /// durability, or acquiring a later location). An operation waiting for this very location does not block:
    /// that is the tie-break case, and waiting there must never stop us answering (hazard 5).
    func blocked(_ l: Location) -> Bool {
        guard let lk = locks.at(l) else { return false }
        for h in lk.holders {
            guard let op = ops[h] else { continue }
            if op.phase == .granted || op.phase == .durableWait { return true }
            if op.index < op.items.count && op.items[op.index].location != l { return true }
        }
        return false
    }

    /// Finding 7: a local read waits at `l` for the answer to our pull. Granting the peer's mark makes that answer
    /// worthless (the grant cancels the pull: the answer may predate the peer's token), so the read pulls again, and
    /// under contention again and again. The first time this happens to a read of `l` is allowed (writers keep their
    /// speed in the common case); from then on the peer's marks for `l` wait until the read has its answer and is done
    /// (the read's lock release processes them). So a read pulls at most twice once it is first in line for `l`.
    /// No deadlock: the read holds only locations up to `l`, the marker's operation waits on `l` or a later one.
    func starvedReadAwaitsAnswer(_ l: Location) -> Bool {
        !starvedReads.isEmpty && starvedReads.contains(l) && readAwaitsAnswer(l)
    }

    func readAwaitsAnswer(_ l: Location) -> Bool {
        guard pulls.at(l) != nil, connected else { return false }
        func readsHere(_ w: OperationID) -> Bool {
            guard let op = ops[w], op.phase == .netWait || op.phase == .lockWait, op.index < op.items.count else {
                return false
            }
            let it = op.items[op.index]
            return it.location == l && it.access == .read
        }
        // Holding `l` and waiting for the answer itself.
        if let ws = netWaiters.at(l), ws.contains(where: { ops[$0]?.holdsCurrent == true && readsHere($0) }) { return true }
        // Next in line for the lock (its pull went out early, with the operation), behind holders that are past `l`
        // and so need nothing more of the peer for it. Never behind a local writer waiting at `l` for the token:
        // that is the tie-break case, and holding the peer's mark there would stall both nodes.
        guard let lk = locks.at(l), let first = lk.waiters.first, readsHere(first) else { return false }
        return lk.holders.allSatisfy { h in
            guard let op = ops[h] else { return true }
            return op.phase == .granted || op.phase == .durableWait
                || (op.index < op.items.count && op.items[op.index].location != l)
        }
    }

    /// Another operation needs a location granted for someone else's full overwrite: the copy is possibly stale, so
    /// the location goes back to MOOS and follows the normal paths.
    func revokeTakeover(_ l: Location) {
        let before = persisted(l)
        takeover[l] = nil
        bits.setToken(l, .moos)
        noteHandedBack(l)
        touch(l, before)
    }

    func wake(_ l: Location) {
        guard let ws = netWaiters.removeValue(forKey: l) else { return }
        for w in ws where ops[w]?.phase == .netWait { advance(w) }
    }

    func scheduleWake(_ t: Tick) {
        if let n = nextWake, n > now, n <= t { return }
        nextWake = t
        out.append(.wakeAt(t))
    }

    func fail(_ id: OperationID, _ e: OperationError) {
        guard let op = ops[id] else { return }
        counters.operationsFailed += 1
        out.append(.fail(id, e))
        endOperation(op)
    }

    // MARK: outgoing requests

    func sendMark(_ need: [AccessItem], hint: PredictionHint, for op: OperationID) {
        var items: [MarkItem] = []
        for it in need where markOf.at(it.location) == nil && bits.token(it.location) != .mos {
            let moos = bits.token(it.location) == .moos
            let needData = moos && it.access != .writeFull
            items.append(MarkItem(location: it.location, needData: needData, predicted: false,
                                  forceData: needData && (bits.oos(it.location) || isUncompared(it.location))))
            if moos && it.access == .writeFull { takeoverRequested[it.location] = op }
        }
        if items.isEmpty { return }
        var suggested: [Location] = []
        // A leaving node takes no tokens it was not asked for: it is giving them all back.
        if !leaving { prediction.predict(needed: items.map(\.location), hint: hint, into: &suggested) }
        if !suggested.isEmpty {
            var seen = Set(items.map(\.location))
            for s in suggested {
                if items.count >= config.maxMarkItems { break }  // a long window is cut here, not scanned to its end
                guard !seen.contains(s), bits.token(s) == .none, markOf.at(s) == nil, locks.at(s) == nil,
                      receiving.at(s) == nil, answering.at(s) == nil, grantsUnsent.at(s) == nil else { continue }
                seen.insert(s)
                items.append(MarkItem(location: s, needData: false, predicted: true))
                counters.locationsPredicted += 1
            }
        }
        let id = nextMarkID
        nextMarkID += 1
        for it in items {
            let before = persisted(it.location)
            markOf[it.location] = id
            touch(it.location, before)
        }
        if rules.persistSupersetBeforeWrite {
            // The superset is persisted while the mark travels: no added latency, and it is durable before the
            // first write under the new token (hazard 7).
            let t = flushPersist()
            for it in items { supersetPending[it.location] = t }
            supersetQueue.append((t, items.map(\.location)))
        }
        var om = OutMark(items: items, remaining: items.count)
        for it in items where it.needData { om.needData.insert(it.location) }
        outMarks[id] = om
        counters.marksSent += 1
        counters.locationsMarked += items.count
        if connected { out.append(.send(.mark(Mark(id: id, items: items, clock: clock)))) }
    }

    /// Locations where we hold OOS ourselves (contested: after a restart, or a token handed over unsynced) ask for
    /// the peer's data unconditionally; the newer version wins on both sides.
    func sendPull(_ locs: [Location]) {
        var plain: [Location] = [], forced: [Location] = []
        for l in locs { if bits.oos(l) || isUncompared(l) { forced.append(l) } else { plain.append(l) } }
        // At most `maxMarkItems` locations per message: re-sent pulls after a reconnect can be many, frames are bounded.
        let chunk = max(1, config.maxMarkItems)
        for (group, force) in [(plain, false), (forced, true)] where !group.isEmpty {
            for start in stride(from: 0, to: group.count, by: chunk) {
                let part = Array(group[start..<min(start + chunk, group.count)])
                let id = nextPullID
                nextPullID += 1
                for l in part { pulls[l] = id }
                counters.pullsSent += 1
                if connected { out.append(.send(.pull(Pull(locations: part, id: id, forceData: force)))) }
            }
        }
    }

    // MARK: messages

    func receive(_ m: Message) {
        switch m {
        case .hello(let h):
            peerHello = h
            observe(clock: h.clock)
            counters.handshakes += 1
        case .mark(let mk): receiveMark(mk)
        case .markReply(let r): receiveMarkReply(r)
        case .pull(let p):
            for l in p.locations {
                if blocked(l) || adoptionLanding(l) {
                    deferred[l, default: []].append(.pull(id: p.id, forceData: p.forceData))
                } else {
                    answerPull(l, pullID: p.id, forceData: p.forceData)
                }
            }
        case .pullAnswer(let a): receiveAnswer(a)
        case .ack(let r): receiveAck(r)
        case .push(let p):
            observe(clock: p.version.counter)
            let t = newToken()
            writes[t] = PendingWrite(location: p.location, version: p.version, kind: .push(durable: p.durable))
            issuePeerWrite(t, p.location, p.payload, p.version)
        case .release(let r):
            counters.releasesReceived += r.locations.count
            // An uncompared copy keeps its MOOS: it must fetch the peer's data before serving (finding 10).
            for l in r.locations where bits.token(l) == .moos && !isUncompared(l) {
                let before = persisted(l)
                bits.setToken(l, .none)
                touch(l, before)
                wake(l)
            }
        }
    }

    func receiveMark(_ m: Mark) {
        counters.marksReceived += 1
        observe(clock: m.clock)
        var reply = PendingReply(id: m.id, epoch: epoch)
        for item in m.items {
            if blocked(item.location) || starvedReadAwaitsAnswer(item.location) || adoptionLanding(item.location) {
                deferred[item.location, default: []].append(.mark(id: m.id, item: item))
            } else {
                grantOrRefuse(item, &reply)
            }
        }
        finishReply(reply)
    }

    /// Hazard 1: if both nodes have a mark for `l` outstanding, the lower node id wins; the other grants, and its
    /// own mark comes back refused (it then holds MOOS and retries through the pull path).
    func grantOrRefuse(_ item: MarkItem, _ reply: inout PendingReply) {
        let l = item.location
        if rules.tieBreakConcurrentMarks, markOf.at(l) != nil, config.node < config.peer {
            reply.refused.append(l)
            return
        }
        let before = persisted(l)
        if readAwaitsAnswer(l) { starvedReads.insert(l) }  // this grant costs the read its answer (finding 7)
        cancelPull(l)
        // A grant of ours whose data are still landing is given back: the peer asked after granting it.
        landing[l] = nil
        // Giving the token away: from now on this node must pull before serving l (MOOS), and it keeps OOS until
        // the peer acknowledges our data (the location becomes contested if OOS is set).
        takeover[l] = nil
        bits.setToken(l, .moos)
        // The peer may end with MOOS but without the token (its takeover died, or its copy landed after it gave the
        // token back): a leaving node releases it.
        noteHandedBack(l)
        touch(l, before)
        grantsUnsent[l, default: 0] += 1
        if rules.invalidateBeforeAck { out.append(.invalidateCaches(l)) }
        if item.needData && (bits.oos(l) || item.forceData) && adoptsPeerCopy(l) {
            // Adopting: our copy is untrusted; version zero makes the marker keep its own (section 13).
            reply.granted.append(MarkGrant(location: l, data: Payload([]), version: .zero))
        } else if item.needData && (bits.oos(l) || item.forceData) {
            let t = newToken()
            reads[t] = .markData(l, reply: nextReplyKey, epoch: epoch, gen: beginSend(l))
            reply.readsOutstanding += 1
            out.append(.storeRead(CompletionToken(t), l))
        } else {
            reply.granted.append(MarkGrant(location: l))
        }
    }

    /// An answer to a pull of ours that the peer sends before it receives our grant of `l` says nothing about the
    /// token it is about to get: such an answer must not clear the MOOS we promised. Called when granting and again
    /// when the grant leaves (a pull sent in between is answered before the peer sees the grant).
    func cancelPull(_ l: Location) {
        pulls[l] = nil
        if receiving.at(l) != nil {
            for (t, w) in writes where w.location == l {
                if case .answer = w.kind { writes[t]!.kind = .answer(clearsMOOS: false) }
            }
        }
    }

    /// Sends the reply once MOOS is durable (hazard 7) and requested data are read.
    func finishReply(_ reply: PendingReply) {
        guard !reply.granted.isEmpty || !reply.refused.isEmpty || reply.readsOutstanding > 0 else { return }
        var r = reply
        r.persistToken = flushPersist()
        let key = nextReplyKey
        nextReplyKey += 1
        if replyReady(r) { sendReply(r) } else { replies[key] = r }
    }

    func replyReady(_ r: PendingReply) -> Bool {
        r.readsOutstanding == 0 && (!rules.persistMOOSBeforeAck || durableToken >= r.persistToken)
    }

    func sendReply(_ r: PendingReply) {
        for g in r.granted {
            if let n = grantsUnsent.at(g.location) { grantsUnsent[g.location] = n <= 1 ? nil : n - 1 }
            cancelPull(g.location)
            if bits.oos(g.location) { enqueuePush(g.location) }  // the copy skipped it while the grant was unsent
        }
        if connected && r.epoch == epoch {
            if !r.refused.isEmpty { counters.marksRefused += r.refused.count }
            out.append(.send(.markReply(MarkReply(id: r.id, granted: r.granted, refused: r.refused, clock: clock))))
        }
        for g in r.granted { wake(g.location) }
    }

    func flushReadyReplies() {
        guard !replies.isEmpty else { return }
        for k in replies.keys.sorted() where replyReady(replies[k]!) {
            sendReply(replies.removeValue(forKey: k)!)
        }
    }

    func receiveMarkReply(_ r: MarkReply) {
        observe(clock: r.clock)
        for g in r.granted where markOf[g.location] != r.id || outMarks[r.id] == nil {
            noteHandedBack(g.location)  // the peer set MOOS for a token we do not take
            // Data for a grant we no longer wait for: still land it (if newer) and acknowledge it, or the granter
            // would wait for the ack forever.
            if let data = g.data, let v = g.version {
                observe(clock: v.counter)
                let t = newToken()
                writes[t] = PendingWrite(location: g.location, version: v, kind: .push(durable: false))
                issuePeerWrite(t, g.location, data, v)
            }
        }
        guard var om = outMarks[r.id] else { return }
        var woken: [Location] = []
        for g in r.granted where markOf[g.location] == r.id {
            if let data = g.data, let v = g.version {
                // Fig. 5B: the peer's unsynced data land before the token is usable for a partial write.
                observe(clock: v.counter)
                let t = newToken()
                markOf[g.location] = nil
                landing[g.location] = r.id
                writes[t] = PendingWrite(location: g.location, version: v, kind: .markData(markID: r.id))
                issuePeerWrite(t, g.location, data, v)
            } else {
                takeToken(g.location, markID: r.id, om: &om)
                woken.append(g.location)
            }
        }
        for l in r.refused where markOf[l] == r.id {
            let before = persisted(l)
            markOf[l] = nil
            om.remaining -= 1
            takeoverRequested[l] = nil
            touch(l, before)
            woken.append(l)
        }
        if om.remaining <= 0 { outMarks[r.id] = nil } else { outMarks[r.id] = om }
        // Waiters run after every location of the reply is settled, so a multi-location operation sees them all.
        for l in woken { wake(l) }
    }

    func takeToken(_ l: Location, markID: UInt64, om: inout OutMark) {
        let before = persisted(l)
        let wasMoos = bits.token(l) == .moos
        let needData = om.needData.contains(l)
        markOf[l] = nil
        om.remaining -= 1
        if wasMoos && !needData {
            // Takeover for a full overwrite: usable only by the operation that asked; without it our copy stays
            // behind the peer's, so the location stays MOOS (both sides pull) instead.
            if let op = takeoverRequested.removeValue(forKey: l), ops[op] != nil {
                takeover[l] = op
                bits.setToken(l, .mos)
            } else {
                noteHandedBack(l)  // the peer holds MOOS for a token nobody took
                // Nobody holds the token and both sides hold MOOS: compare now (see `endOperation`).
                if connected && pulls[l] == nil && grantsUnsent.at(l) == nil { sendPull([l]) }
            }
        } else {
            bits.setToken(l, .mos)
        }
        // A token just granted is warm even if no operation used it yet (predicted locations): releasing it at
        // the next tick would throw the prediction away.
        if config.release.enabled { hot.insert(l) }
        if !answeredAway.isEmpty && bits.token(l) == .mos { answeredAway.remove(l) }
        touch(l, before)
    }

    /// `pullID` 0: a prefetched answer nobody asked for.
    func answerPull(_ l: Location, pullID: UInt64, forceData: Bool = false) {
        let prefetched = pullID == 0
        let before = persisted(l)
        // A grant still landing is a token we hold: answering hands it back like MOS (hazard 2).
        if rules.giveUpTokenOnPull { landing[l] = nil }
        if rules.giveUpTokenOnPull {
            // Hazard 2: the answer hands the token back; a takeover copy is stale, so it returns to MOOS.
            if takeover.at(l) != nil { takeover[l] = nil; bits.setToken(l, .moos); noteHandedBack(l) }
            else if bits.token(l) == .mos {
                bits.setToken(l, .none)
                // The answer ends the peer's MOOS like a release, and like a release it can die with the connection
                // (or with the peer's restart, which restores MOOS): re-sent as a release after a reconnect.
                if releasedOnConnection.count < maxTrackedReleases { releasedOnConnection.append(l) }
            }
        }
        touch(l, before)
        if (bits.oos(l) || forceData) && adoptsPeerCopy(l) {
            // Adopting: our copy is untrusted and never read; version zero makes the puller keep its own (section 13).
            counters.pullAnswersData += 1
            out.append(.send(.pullAnswer(PullAnswer(location: l, content: .data(Payload([]), .zero),
                                                    prefetched: prefetched, clock: clock, pullID: pullID))))
        } else if bits.oos(l) || forceData {
            let t = newToken()
            reads[t] = .answer(l, pullID: pullID, epoch: epoch, gen: beginSend(l))
            answering[l, default: 0] += 1
            out.append(.storeRead(CompletionToken(t), l))
            if !prefetched { prefetch(after: l) }
        } else {
            counters.pullAnswersInSync += 1
            out.append(.send(.pullAnswer(PullAnswer(location: l, content: .inSync, prefetched: prefetched, clock: clock,
                                                    pullID: pullID))))
        }
    }

    /// Fig. 4 after step 92: out-of-sync tracks just after the pulled one go along, as unsolicited answers.
    func prefetch(after l: Location) {
        guard config.prefetchTracks > 0, let t = l.trackIndex else { return }
        var cands: [Location] = []
        bits.oosLocations(ino: l.ino, fromSlot: t + 2, limit: config.prefetchTracks, into: &cands)
        for c in cands {
            guard let ct = c.trackIndex, ct <= t + UInt64(config.prefetchTracks) * 2,
                  bits.token(c) == .mos, locks.at(c) == nil, inFlight.at(c) == nil, takeover.at(c) == nil,
                  receiving.at(c) == nil, deferred.at(c) == nil else { continue }
            counters.prefetchesSent += 1
            answerPull(c, pullID: 0)
        }
    }

    /// Returns the write generation the read will carry.
    func beginSend(_ l: Location) -> UInt64 {
        var e = inFlight[l] ?? Sent()
        e.reading += 1
        inFlight[l] = e
        return e.gen
    }

    func receiveAnswer(_ a: PullAnswer) {
        observe(clock: a.clock)
        let l = a.location
        switch a.content {
        case .inSync:
            let solicited = a.pullID != 0 && pulls[l] == a.pullID
            if solicited { pulls[l] = nil; starvedReads.remove(l) }
            // An uncompared copy keeps MOOS until data land: only a forced pull (answered with data) compares it.
            if solicited && bits.token(l) == .moos && !isUncompared(l) {
                let before = persisted(l)
                bits.setToken(l, .none)
                touch(l, before)
            }
            if bits.oos(l) { enqueuePush(l) }
            wake(l)
        case .data(let p, let v):
            observe(clock: v.counter)
            let t = newToken()
            // Only an answer we are waiting for (or a prefetch, sent as the peer gave MOS up) clears MOOS.
            let clears = (a.pullID != 0 && pulls[l] == a.pullID) || a.prefetched
            writes[t] = PendingWrite(location: l, version: v, kind: .answer(clearsMOOS: clears))
            issuePeerWrite(t, l, p, v)
        }
    }

    func receiveAck(_ r: Receipt) {
        counters.acksReceived += 1
        let l = r.location
        guard var e = inFlight[l] else {
            if !rules.ignoreStaleAcks { clearOOS(l) }
            return
        }
        if e.pushing { e.pushing = false; pushesInFlight -= 1 }
        if (e.lastSent == r.version && e.gen == e.sentGen) || !rules.ignoreStaleAcks {
            if (flushNeeds.at(l) ?? 0) > 0 && !r.durable {
                // A flush waits on this location: only a durable copy counts, so push again asking for one.
                e.lastSent = nil
                enqueuePush(l)
            } else {
                e.lastSent = nil
                clearOOS(l)
            }
        } else {
            counters.staleAcksIgnored += 1
            if e.lastSent == r.version { e.lastSent = nil }
            if bits.oos(l) { enqueuePush(l) }
        }
        if e.reading == 0 && !e.pushing && e.lastSent == nil { inFlight[l] = nil } else { inFlight[l] = e }
    }

    func clearOOS(_ l: Location) {
        guard bits.oos(l) else { return }
        let before = persisted(l)
        setOOS(l, false)
        touch(l, before)
        if (flushNeeds.at(l) ?? 0) > 0 { satisfyFlushes(l) }
    }

    // MARK: store completions

    func readDone(_ t: UInt64, _ p: Payload, _ v: Version) {
        guard let r = reads.removeValue(forKey: t) else { return }
        switch r {
        case .push(let l, let ep, let gen):
            var e = inFlight[l] ?? Sent()
            e.reading -= 1
            if ep == epoch && connected && e.pushing && bits.oos(l) {
                e.lastSent = v
                e.sentGen = gen
                counters.pushesSent += 1
                out.append(.send(.push(Push(location: l, payload: p, version: v, durable: (flushNeeds.at(l) ?? 0) > 0))))
            } else if e.pushing {
                e.pushing = false
                if ep == epoch { pushesInFlight -= 1 }
            }
            storeSent(l, e)
        case .answer(let l, let pullID, let ep, let gen):
            if let n = answering.at(l) { answering[l] = n <= 1 ? nil : n - 1 }
            defer { wake(l) }
            var e = inFlight[l] ?? Sent()
            e.reading -= 1
            if ep == epoch && connected {
                e.lastSent = v
                e.sentGen = gen
                counters.pullAnswersData += 1
                out.append(.send(.pullAnswer(PullAnswer(location: l, content: .data(p, v), prefetched: pullID == 0,
                                                        clock: clock, pullID: pullID))))
            }
            storeSent(l, e)
        case .markData(let l, let key, let ep, let gen):
            var e = inFlight[l] ?? Sent()
            e.reading -= 1
            if ep == epoch, var reply = replies[key] {
                e.lastSent = v
                e.sentGen = gen
                reply.readsOutstanding -= 1
                reply.granted.append(MarkGrant(location: l, data: p, version: v))
                replies[key] = reply
                flushReadyReplies()
            }
            storeSent(l, e)
        }
    }

    func storeSent(_ l: Location, _ e: Sent) {
        if e.reading <= 0 && !e.pushing && e.lastSent == nil {
            inFlight[l] = nil
            // Nothing travels for it any more (a read from a lost connection): the background copy takes it again.
            if bits.oos(l) { enqueuePush(l) }
        } else {
            inFlight[l] = e
        }
    }

    func writeDone(_ t: UInt64, _ stored: Version) {
        guard let w = writes.removeValue(forKey: t) else { return }
        let l = w.location
        if let n = receiving.at(l) { if n <= 1 { receiving[l] = nil } else { receiving[l] = n - 1 } }
        if case .answer(true) = w.kind, bits.isJoinDefault(l) {
            // Joining, and this answer clears the default MOOS: compared and in sync in one change (the location
            // needed no entry before and needs none after, unless adopting: then it must persist `moos`).
            let before = adopting ? persisted(l) : .none
            settleCompared(l, keepMOOS: false)
            if adopting { touch(l, before) }
        } else {
            compared(l)
        }
        // Our own unsynced copy is superseded once the store holds the peer's newer version (hazard 4).
        // Not if a local write finished meanwhile: that write set OOS for data the peer has never seen.
        if stored == w.version && !w.localWriteSince && bits.oos(l) && bits.token(l) != .mos { clearOOS(l) }
        switch w.kind {
        case .answer(let clears):
            if clears { pulls[l] = nil; starvedReads.remove(l) }
            if clears && bits.token(l) == .moos {
                let before = persisted(l)
                bits.setToken(l, .none)
                touch(l, before)
            }
            sendAck(l, w.version, durable: true)
        case .push:
            sendAck(l, w.version, durable: true)
        case .markData(let id):
            sendAck(l, w.version, durable: true)
            if landing[l] == id, var om = outMarks[id] {
                landing[l] = nil
                markOf[l] = id
                takeToken(l, markID: id, om: &om)  // woken below
                if om.remaining <= 0 { outMarks[id] = nil } else { outMarks[id] = om }
            } else if var om = outMarks[id] {
                // The grant was abandoned (the peer asked for the token back): only the bookkeeping remains.
                om.remaining -= 1
                if om.remaining <= 0 { outMarks[id] = nil } else { outMarks[id] = om }
            }
        }
        if bits.oos(l) { enqueuePush(l) }
        wake(l)
        // Adopting: requests deferred while the peer's copy landed (`adoptionLanding`) are served now.
        if adopting && receiving.at(l) == nil && deferred.at(l) != nil { serveDeferred(l) }
        if joinCompletionDeferred && !adoptPending.isEmpty && adoptPending.remove(l) != nil && adoptPending.isEmpty {
            completeJoin()
        }
    }

    /// Received data are always written with `sync: true` before this: an ack lets the sender clear OOS and forget,
    /// so what it acknowledges must survive a power loss here.
    func sendAck(_ l: Location, _ v: Version, durable: Bool) {
        if connected { out.append(.send(.ack(Receipt(location: l, version: v, durable: durable)))) }
    }

    func persistDone(_ t: UInt64) {
        if t > durableToken { durableToken = t }
        if let s = soleEnding, durableToken >= s.token {
            // Sole mode has ended durably: the connection is used now, with what the peer sent meanwhile.
            soleEnding = nil
            connectionUp(s.epoch)
            let queued = soleQueue
            soleQueue = []
            for m in queued where connected { receive(m) }
        }
        while let first = supersetQueue.first, first.token <= durableToken {
            supersetQueue.removeFirst()
            for l in first.locations where supersetPending.at(l) == first.token { supersetPending[l] = nil }
        }
        if let r = reservationInFlight, r.token <= durableToken {
            clockReserved = max(clockReserved, r.value)
            reservationInFlight = nil
        }
        flushReadyReplies()
        if !durableWaiters.isEmpty {
            let ws = durableWaiters
            durableWaiters = []
            for w in ws where ops[w]?.phase == .durableWait {
                ops[w]!.phase = .netWait // re-evaluated by tryGrant
                tryGrant(w)
            }
        }
    }

    // MARK: background copy, flush, release

    func pumpPushes() {
        lastPumpTick = now
        var budget = 64
        var cands: [Location] = []
        var resync: [Location] = []
        defer { if !resync.isEmpty { sendPull(resync) } }
        while pushesInFlight < config.maxInFlightPushes, budget > 0, let ino = pushQueue.first {
            budget -= 1
            cands.removeAll(keepingCapacity: true)
            bits.oosLocations(ino: ino, fromSlot: bits.pushCursor(ino),
                              limit: config.maxInFlightPushes - pushesInFlight, into: &cands)
            if cands.isEmpty { pushQueue.removeFirst(); continue }
            for l in cands {
                bits.setPushCursor(ino, l.slot + 1)
                // Skipped locations come back through enqueuePush when what blocked them completes.
                guard inFlight.at(l) == nil, receiving.at(l) == nil, !blocked(l) else { continue }
                if bits.token(l) == .moos {
                    // Contested (after a restart, or a token handed over unsynced): our copy may be behind the
                    // peer's, so compare instead of pushing: a forced pull brings the peer's copy, the newer version
                    // wins, and if ours was newer it is pushed afterwards (hazard 3, G5).
                    if pulls.at(l) == nil && grantsUnsent.at(l) == nil && answering.at(l) == nil { resync.append(l) }
                    continue
                }
                let t = newToken()
                reads[t] = .push(l, epoch: epoch, gen: 0)
                var e = Sent()
                e.reading = 1
                e.pushing = true
                inFlight[l] = e
                pushesInFlight += 1
                out.append(.storeRead(CompletionToken(t), l))
            }
        }
    }

    func requestFlush(_ id: FlushID, _ locs: [Location]) {
        // Sole: there is no peer to hold a copy; the store's own durability is all there is (section 13).
        if sole { out.append(.flushDone(id)); return }
        var need = Set<Location>()
        for l in locs where bits.oos(l) && !need.contains(l) {
            need.insert(l)
            flushNeeds[l, default: 0] += 1
            enqueuePush(l)
        }
        if need.isEmpty { out.append(.flushDone(id)); return }
        flushes[id] = Flush(need: need, start: now)
        scheduleWake(now &+ config.peerTimeoutTicks)
    }

    func satisfyFlushes(_ l: Location) {
        for (id, var f) in flushes where f.need.contains(l) {
            f.need.remove(l)
            decNeed(l)
            if f.need.isEmpty { flushes[id] = nil; out.append(.flushDone(id)) } else { flushes[id] = f }
        }
    }

    func decNeed(_ l: Location) {
        if let n = flushNeeds.at(l) { if n <= 1 { flushNeeds[l] = nil } else { flushNeeds[l] = n - 1 } }
    }

    func releaseCold() {
        guard config.release.enabled || leaving, connected else { return }
        if config.release.enabled && now &- hotRotatedAt >= max(1, config.release.coldAfterTicks / 2) {
            hotPrevious = hot
            hot = []
            hotRotatedAt = now
        }
        if releaseScan.isEmpty { releaseScan = bits.inodeNumbers }
        var released: [Location] = []
        var cands: [Location] = []
        var budget = 64
        while released.count < config.release.maxReleasesPerTick, budget > 0, let ino = releaseScan.popLast() {
            budget -= 1
            cands.removeAll(keepingCapacity: true)
            bits.mosLocations(ino: ino, into: &cands)
            for l in cands where released.count < config.release.maxReleasesPerTick {
                // Leaving ignores the hot set: every token goes back as soon as it is in sync and unused.
                guard !bits.oos(l), leaving || (!hot.contains(l) && !hotPrevious.contains(l)), locks.at(l) == nil,
                      inFlight.at(l) == nil, takeover.at(l) == nil, markOf.at(l) == nil, receiving.at(l) == nil,
                      deferred.at(l) == nil else { continue }
                let before = persisted(l)
                bits.setToken(l, .none)
                touch(l, before)
                released.append(l)
            }
        }
        if leaving && !answeredAway.isEmpty && released.count < config.release.maxReleasesPerTick {
            // Tokens handed over by answers: the peer may still hold MOOS for them (see `answeredAway`).
            for l in answeredAway.sorted() where released.count < config.release.maxReleasesPerTick {
                // MOS: the release scan takes it. MOOS is fine: we hold no token and nothing the peer lacks.
                guard bits.token(l) != .mos else { answeredAway.remove(l); continue }
                guard !bits.oos(l), takeover.at(l) == nil, locks.at(l) == nil, inFlight.at(l) == nil,
                      markOf.at(l) == nil, landing.at(l) == nil, receiving.at(l) == nil, answering.at(l) == nil,
                      deferred.at(l) == nil else { continue }
                answeredAway.remove(l)
                released.append(l)
            }
        }
        if !released.isEmpty {
            if releasedOnConnection.count + released.count <= maxTrackedReleases {
                releasedOnConnection.append(contentsOf: released)
            }
            counters.releasesSent += released.count
            out.append(.send(.release(Release(locations: released))))
        }
    }

    // MARK: connection, time, restart

    func connectionUp(_ e: UInt64) {
        if sole {
            // The shell connects a sole node only to a demoted or fresh peer, which reads MOOS everywhere (its joining
            // default): our MOS and OOS stay valid as they are, and the background copy pushes the OOS. But nothing
            // may reach the peer before the end of sole mode is durable: a restart still recorded sole would trust
            // its MOS copies, although the peer may by then hold newer data of ours (a power loss here can undo
            // writes the peer acknowledged). The connection is used once the batch is durable (`persistDone`).
            sole = false
            soleChange = false
            soleEnding = (e, flushPersist())
            soleQueue = []
            return
        }
        connected = true
        epoch = e
        out.append(.send(.hello(Hello(node: config.node, epoch: e, incarnation: incarnation, clock: clock))))
        // Pending requests are re-sent; the peer handles them idempotently. Every pending mark goes, whatever else
        // is under way for its location: nothing re-sends it later (a waiting operation marks only where no mark is
        // pending), and while it stays pending we refuse the peer's marks there (tie-break), so an unsent one stalls
        // both nodes, and a grant of it the peer persisted before the connection dropped leaves the peer MOOS that
        // nobody clears (sim seed 2601 with `--leave`: a pull answer was landing at the reconnect). A grant's own
        // data landing is not a pending mark (`landing`).
        for id in outMarks.keys.sorted() {
            let items = outMarks[id]!.items.filter { markOf[$0.location] == id }
            if !items.isEmpty { out.append(.send(.mark(Mark(id: id, items: items, clock: clock)))) }
        }
        if !pulls.isEmpty { sendPull(pulls.keys.sorted()) }
        // Restored copies are compared without waiting for a local read: the forced pull brings the peer's data.
        // Those still OOS are the background copy's (it compares contested locations at its own pace); the rest lost
        // their OOS to an ack before their comparison, a set bounded by what was in flight.
        let compare = uncompared.filter {
            !bits.oos($0) && pulls[$0] == nil && bits.token($0) == .moos && answering.at($0) == nil
                && receiving.at($0) == nil
        }
        if !compare.isEmpty { sendPull(compare.sorted()) }
        for ino in bits.inodeNumbers { bits.setPushCursor(ino, 0); pushQueue.insert(ino) }
        // Releases that may have died with the last connection, for locations still released (no token, nothing
        // unsynced, no mark of ours on the way): the peer's MOOS there is stale, and it clears only MOOS it can.
        let candidates = Set(releaseResend)
        let resend = candidates.filter {
            bits.token($0) == .none && !bits.oos($0) && markOf.at($0) == nil && landing.at($0) == nil
        }.sorted()
        // The rest are not released yet (our copy has not landed, or a mark of ours is on the way), but the peer may
        // hold MOOS there that only a release clears: if we leave before a new token comes back, the release must
        // still go (sim seed 1346: an answer lost with the peer's restart, then the push acked, then a leave).
        let resendSet = Set(resend)
        for l in candidates.sorted() where !resendSet.contains(l) && bits.token(l) != .mos { noteHandedBack(l) }
        releaseResend = []
        releasedOnConnection = resend
        let chunk = max(1, config.maxMarkItems)
        for start in stride(from: 0, to: resend.count, by: chunk) {
            out.append(.send(.release(Release(locations: Array(resend[start..<min(start + chunk, resend.count)])))))
        }
    }

    func connectionDown() {
        soleEnding = nil
        soleQueue = []
        connected = false
        if releaseResend.count + releasedOnConnection.count <= maxTrackedReleases {
            releaseResend.append(contentsOf: releasedOnConnection)
        }
        releasedOnConnection = []
        peerHello = nil
        deferred = [:]
        replies = [:]
        grantsUnsent = [:]
        pushesInFlight = 0
        for (l, var e) in inFlight {
            e.pushing = false
            e.lastSent = nil
            if e.reading <= 0 { inFlight[l] = nil } else { inFlight[l] = e }
        }
    }

    func tick(_ t: Tick) {
        if t > now { now = t }
        if let n = nextWake, n <= now { nextWake = nil }
        let deadline = config.peerTimeoutTicks
        let expired = ops.values.filter { $0.phase != .granted && now &- $0.startTick >= deadline }.map(\.id)
        // Failing one operation releases its locks, which may grant another expired one: that one is served now.
        for id in expired.sorted(by: { $0.raw < $1.raw }) where ops[id].map({ $0.phase != .granted }) ?? false {
            fail(id, .peerTimeout)
        }
        for (id, f) in flushes where now &- f.start >= deadline {
            flushes[id] = nil
            for l in f.need { decNeed(l) }
            out.append(.flushFailed(id, .peerTimeout))
        }
        // A deferred completion re-pulls what a grant of ours cancelled, and completes once nothing is left.
        if joinCompletionDeferred { completeJoin() }
        releaseCold()
    }

    /// The shell's walk is done: unknown locations read as none from now on. Locations that are still uncompared
    /// and have explicit state or are in use (an operation, a pull, a mark...) keep MOOS as members of `uncompared`
    /// and are persisted `contested`, in the batch that carries the completion, so that no restart can read them as
    /// none (the peer may hold the token, or a read waits for their data).
    func completeJoin() {
        guard bits.joining else { return }
        var adopted: [(Location, PersistedState)] = []
        if adopting {
            // Untrusted locations that have explicit state or are in use would become ordinary uncompared ones, whose
            // comparison lets the higher version win: our stale copy could then beat the peer's. Adopt them first.
            var pending: [Location] = []
            bits.forEachJoinUncompared { if adoptsPeerCopy($0) { pending.append($0) } }
            for l in inUseLocations().sorted() where adoptsPeerCopy(l) && bits.isJoinDefault(l) { pending.append(l) }
            if !pending.isEmpty {
                joinCompletionDeferred = true
                adoptPending = Set(pending)
                let pull = adoptPending.filter {
                    pulls[$0] == nil && grantsUnsent.at($0) == nil && receiving.at($0) == nil
                }.sorted()
                if !pull.isEmpty { sendPull(pull) }  // re-sent at `connectionUp` while disconnected
                return
            }
            // Adopted locations persisted `moos` to stay trusted across restarts; that ends with the adoption.
            bits.forEachCompared { adopted.append(($0, persisted($0))) }
            adopting = false
            joinCompletionDeferred = false
        }
        var keep: [Location] = []
        bits.forEachJoinUncompared { keep.append($0) }
        for l in inUseLocations().sorted() where bits.isJoinDefault(l) { keep.append(l) }
        let before = keep.map { persisted($0) }
        for l in keep where bits.token(l) == .moos || takeover.at(l) != nil {
            if bits.token(l) == .moos { bits.setToken(l, .moos) }  // a default MOOS becomes explicit
            uncompared.insert(l)
        }
        bits.endJoining()
        for (l, b) in zip(keep, before) { touch(l, b) }
        for (l, b) in adopted { touch(l, b) }
        flushPersist(joinCompleted: true)
    }

    /// Locations an operation, a pull, mark, landing grant, store write, answer, unsent grant or deferred request uses.
    func inUseLocations() -> Set<Location> {
        var inUse = Set<Location>()
        for (_, op) in ops { for it in op.items { inUse.insert(it.location) } }
        for l in pulls.keys { inUse.insert(l) }
        for l in markOf.keys { inUse.insert(l) }
        for l in landing.keys { inUse.insert(l) }
        for l in receiving.keys { inUse.insert(l) }
        for l in answering.keys { inUse.insert(l) }
        for l in grantsUnsent.keys { inUse.insert(l) }
        for l in deferred.keys { inUse.insert(l) }
        return inUse
    }

    func restart(_ r: RecoveredState) {
        let fresh = MirrorNode(config: config, prediction: prediction, recovered: r)
        bits = fresh.bits
        clock = fresh.clock; clockReserved = fresh.clockReserved; reservationInFlight = nil
        incarnation = fresh.incarnation; connected = false; epoch = 0; peerHello = nil
        durableToken = 0; lastPersistToken = 0; nextTokenRaw = 0; dirty = []; wantReservation = nil
        supersetPending = [:]; supersetQueue = []; ops = [:]; locks = [:]; netWaiters = [:]; durableWaiters = []
        outMarks = [:]; markOf = [:]; landing = [:]; pulls = [:]; takeover = [:]; takeoverRequested = [:]
        reads = [:]; writes = [:]; receiving = [:]; inFlight = [:]; pushesInFlight = 0; pushQueue = fresh.pushQueue
        deferred = [:]; replies = [:]; starvedReads = []; grantsUnsent = [:]; answering = [:]; flushes = [:]; flushNeeds = [:]; hot = []; hotPrevious = []
        releaseScan = []; leaving = false; releasedOnConnection = []; releaseResend = []; answeredAway = []; restoredSuperset = fresh.restoredSuperset; uncompared = fresh.uncompared; nextWake = nil; nextMarkID = fresh.nextMarkID
        sole = fresh.sole; soleToken = 0; soleChange = nil; soleTaken = []; adopting = fresh.adopting
        joinCompletionDeferred = false; adoptPending = []; hardenAlso = []; soleEnding = nil; soleQueue = []
        oosNonEmptySince = now
    }

    /// Hazard 3 and 7: after a crash, MOS is never trusted (the token may have been handed over without the
    /// persisted bit catching up); the superset becomes OOS, so every pull for it is answered with data.
    func recover(_ r: RecoveredState) {
        clock = r.clockReservation
        clockReserved = r.clockReservation
        incarnation = r.incarnation
        nextMarkID = (r.incarnation << 40) | 1
        if r.sole {
            // Promoted and no peer since: nobody else can hold the token, so MOS is trusted here (unlike below), and
            // the peer's MOOS was given up at the promotion. A join or an adoption ended with it.
            sole = true
            for e in r.entries where e.state == .held || e.state == .contested {
                bits.setToken(e.location, .mos)
                setOOS(e.location, true)
            }
            return
        }
        if r.joining { bits.startJoining(); adopting = r.adopting }
        for e in r.entries {
            switch e.state {
            case .none: break
            case .moos:
                bits.setToken(e.location, .moos)
                // Joining: an explicit `moos` was persisted only for a compared location (an uncompared one has no
                // entry, or `contested`), and compared data were stored synced.
                if r.joining { bits.setCompared(e.location, keepMOOS: true) }
            case .held, .contested:
                // The store may have lost unsynced writes (power loss) that the peer holds: pull before serving.
                bits.setToken(e.location, .moos)
                if rules.answerInSyncOnlyIfKnown {
                    setOOS(e.location, true)
                    uncompared.insert(e.location)
                    restoredSuperset = true
                }
            }
        }
    }
}

extension Dictionary {
    /// Lookup that skips hashing when the dictionary is empty (most in-flight tables are, on the hot path).
    @inline(__always) func at(_ key: Key) -> Value? { isEmpty ? nil : self[key] }
}

/// FIFO of inode numbers without duplicates (the background-copy work list).
struct InodeQueue {
    private var items: [UInt64] = []
    private var head = 0
    private var members: Set<UInt64> = []
    var first: UInt64? { head < items.count ? items[head] : nil }
    var isEmpty: Bool { head >= items.count }
    mutating func insert(_ ino: UInt64) {
        if members.insert(ino).inserted { items.append(ino) }
    }
    mutating func removeFirst() {
        members.remove(items[head])
        head += 1
        if head > 1024 && head * 2 > items.count { items.removeFirst(head); head = 0 }
    }
}
