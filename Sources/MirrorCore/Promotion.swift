// MirrorCore — promotion (a survivor serves alone) and adoption (a demoted node rejoins), Docs/PROTOCOL.md section 13.
// Owns: the `promoted` transition, the report of what it gives up, and the adopting node's trust rule.
// Must never: run while connected (the peer would still hold tokens we clear), or trust an adopting node's copy of a
// location it has not compared since it rejoined.

extension MirrorNode {
    /// Adopting (`RecoveredState.adopting`): our copy of `l` predates the demotion and was never compared since the
    /// join began, so it is untrusted: the peer's data overwrite it whatever the versions (our stale writes may carry
    /// higher ones), and what we send for it is empty data of version zero, which the peer's `onlyIfNewer` skips.
    /// Restored superset locations (`uncompared`) are not in this class: while adopting, a location gets persisted
    /// state only after it was compared (writes compare first), so their copy is the peer's or our newer write.
    @inline(__always) func adoptsPeerCopy(_ l: Location) -> Bool {
        adopting && bits.joining && !bits.isCompared(l) && !inUncomparedSet(l)
    }

    /// What `Event.promoted` would give up now: locations where the peer may hold data this node lacks (MOOS, explicit
    /// or restored and uncompared), sorted, at most `limit`. `joiningIncomplete`: the node is joining, so every
    /// location it never compared (not listed: they are not enumerable) may be behind the peer as well.
    public func promotionLosses(limit: Int) -> (locations: [Location], truncated: Bool, joiningIncomplete: Bool) {
        var all = Set<Location>(uncompared)
        bits.forEachLive { l, s in if s.token == .moos { all.insert(l) } }
        let sorted = all.sorted()
        let n = max(0, limit)
        return (Array(sorted.prefix(n)), sorted.count > n, bits.joining)
    }

    /// Sole: a write takes MOS here without asking (no peer can hold it). Persisted `held` like a mark's superset, and
    /// `tryGrant` makes the write wait for that persist.
    func takeTokenAlone(_ l: Location) {
        let before = persisted(l)
        bits.setToken(l, .mos)
        touch(l, before)
        soleTaken.append(l)
    }

    /// `Event.promoted`: the peer is gone for good (the operator said so). See `Event.promoted`.
    func promote() {
        guard !connected && !sole && soleEnding == nil else { return }
        let wasJoining = bits.joining
        var touched: [Location] = []
        bits.forEachLive { l, _ in touched.append(l) }
        touched.append(contentsOf: uncompared)
        touched.append(contentsOf: markOf.keys)
        touched.append(contentsOf: landing.keys)
        touched.append(contentsOf: takeover.keys)
        // The join ends: a missing entry now means none, which is what the peer's MOOS becomes everywhere.
        bits.endJoining()
        uncompared = []
        adopting = false
        joinCompletionDeferred = false
        adoptPending = []
        // Pending marks and landing grants are satisfied as if the peer had granted; takeovers become plain MOS (the
        // peer's possibly newer copy they skipped is given up with everything else).
        let granted = Set(markOf.keys).union(landing.keys).union(takeover.keys)
        markOf = [:]; outMarks = [:]; landing = [:]; takeover = [:]; takeoverRequested = [:]
        pulls = [:]; starvedReads = []
        releasedOnConnection = []; releaseResend = []; answeredAway = []
        for l in Set(touched) {
            if granted.contains(l) || bits.oos(l) {
                // OOS under MOS, like a writer's backlog: pushed once a peer connects.
                bits.setToken(l, .mos)
            } else if bits.token(l) == .moos {
                bits.setToken(l, .none)
            }
        }
        // Our writes under MOS (acknowledged or not) may be durable only in the peer's store: our own copy is hardened
        // only when its superset bit drops, and a restart would normally fetch the peer's. A demoted peer's copies are
        // replaced by ours, so ours become durable before the promotion is (one sync per held location, once).
        for l in Set(touched).sorted() where bits.token(l) == .mos { hardenAlso.append(l) }
        // Every touched location is written again (unchanged ones harmlessly): the batch says none for every MOOS.
        dirty.append(contentsOf: Set(touched).sorted())
        sole = true
        soleChange = true
        // Pending flushes complete: the local store's durability is all there is now.
        for id in flushes.keys.sorted(by: { $0.raw < $1.raw }) { out.append(.flushDone(id)) }
        flushes = [:]; flushNeeds = [:]
        soleToken = flushPersist(joinCompleted: wasJoining)
        // Waiting operations are served locally now (in id order, for determinism).
        netWaiters = [:]
        for id in ops.keys.sorted(by: { $0.raw < $1.raw }) where ops[id]?.phase == .netWait { advance(id) }
    }
}
