// MirrorCore — full internal consistency check (the slow half of the paired invariant assertions).
// Owns: checkInvariants(), the O(state) audit the simulator calls between steps.
// Must never: mutate state; it only reports.

extension MirrorNode {
    /// Full consistency check of the internal state (O(state)); returns descriptions of violations, empty if sound.
    /// The cheap half of each pair is asserted inline (`tryGrant`, `LocationBits` makes MOS+MOOS unrepresentable).
    public func checkInvariants() -> [String] {
        var v: [String] = []
        var oos = 0, moos = 0, mos = 0
        bits.forEachLive { l, s in
            if s.outOfSync { oos += 1 }
            if s.token == .moos { moos += 1 }
            if s.token == .mos { mos += 1 }
        }
        if oos != bits.oosCount || moos != bits.moosCount || mos != bits.mosCount {
            v.append("bitmap counts drifted: oos \(oos)/\(bits.oosCount) moos \(moos)/\(bits.moosCount) mos \(mos)/\(bits.mosCount)")
        }
        v += bits.encodingProblems()
        for (_, op) in ops where op.phase == .granted {
            for it in op.items {
                let t = bits.token(it.location)
                if it.access.isWrite && t != .mos { v.append("\(op.id) writes \(it.location) without MOS (\(t))") }
                if !it.access.isWrite && t == .moos { v.append("\(op.id) reads \(it.location) under MOOS") }
            }
        }
        for (l, id) in markOf where outMarks[id] == nil { v.append("mark \(id) for \(l) has no record") }
        for (l, id) in markOf where bits.token(l) == .mos { v.append("mark \(id) pending for \(l) already held") }
        for (l, op) in takeover {
            if bits.token(l) != .mos { v.append("takeover \(l) without MOS") }
            if ops[op] == nil { v.append("takeover \(l) for ended \(op)") }
        }
        var readsPerLocation: [Location: Int] = [:]
        for (_, r) in reads {
            switch r {
            case .push(let l, _, _), .answer(let l, _, _, _), .markData(let l, _, _, _): readsPerLocation[l, default: 0] += 1
            }
        }
        for (l, e) in inFlight where e.reading != (readsPerLocation[l] ?? 0) {
            v.append("\(l): \(e.reading) reads counted, \(readsPerLocation[l] ?? 0) pending")
        }
        for (l, n) in readsPerLocation where inFlight[l] == nil { v.append("\(l): \(n) reads pending without a record") }
        var pushing = 0
        for (_, e) in inFlight where e.pushing { pushing += 1 }
        if pushing != pushesInFlight { v.append("push count drifted: \(pushing) vs \(pushesInFlight)") }
        for (l, lk) in locks {
            for h in lk.holders where ops[h] == nil { v.append("lock \(l) held by ended \(h)") }
            if lk.exclusive && lk.holders.count > 1 { v.append("exclusive lock \(l) has \(lk.holders.count) holders") }
            for w in lk.waiters where ops[w] == nil { v.append("lock \(l) waited on by ended \(w)") }
        }
        for l in uncompared {
            // A restored copy is served only after the peer's data landed, or overwritten whole under a takeover.
            if bits.token(l) == .none { v.append("\(l) is uncompared but has no MOOS") }
            if bits.token(l) == .mos && takeover[l] == nil { v.append("\(l) is uncompared but holds MOS") }
        }
        for (id, op) in ops where op.phase == .granted && op.index != op.items.count {
            v.append("\(id) granted before acquiring everything")
        }
        return v
    }
}
