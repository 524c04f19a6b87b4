// MirrorCore — dense per-inode bitmaps for the token (none/MOOS/MOS) and OOS of every location.
// Owns: the bulk memory of the protocol: 2 bits per track in memory (16M tracks = 4 MiB), nothing for untouched
// inodes. Each track is one 2-bit code: none, MOOS, MOS, or OOS. An OOS track's token is the inode's `oosToken`
// (the token its OOS tracks share in bulk: MOS for a writer's unsent backlog, MOOS for a restored superset) or, where
// it differs, an entry in the inode's small exception table: O(active locations), not O(tracks). Illegal MOS+MOOS is
// unrepresentable: a track has one token.
// While a fresh store joins (`RecoveredState.joining`), a location with no explicit state reads as MOOS (the peer may
// hold anything): the default costs nothing, and only locations touched since get explicit state, plus one
// "compared" bit per track of a touched inode (the peer's data landed or a local write superseded them), dropped
// when the join completes.
// Must never: hold per-location objects for the bulk; in-flight detail lives in the core's small dictionaries.

/// 2-bit codes of a track. 0-2 are the token (TokenState raw values) without OOS; 3 is OOS with the token elsewhere.
private let oosCode: UInt64 = 3
/// Low bit of every 2-bit pair (for finding pairs equal to 3 in a word).
private let pairLowBits: UInt64 = 0x5555_5555_5555_5555

struct InodeBits {
    /// Token of the inode record (2 bits) and its OOS bit.
    var recordToken: TokenState = .none
    var recordOOS = false
    /// Tracks: one 2-bit code each, 32 per word.
    var codes: [UInt64] = []
    /// Token of the OOS tracks not listed in `exceptions`; chosen by the first OOS track after none were left, and
    /// switched to the majority when exceptions outnumber the rest.
    var oosToken: TokenState = .none
    /// OOS tracks (code 3) of this inode.
    var oosTracks = 0
    /// OOS tracks whose token differs from `oosToken`.
    var exceptions: [UInt64: TokenState] = [:]
    /// Number of locations of this inode with a non-none token or OOS (the inode is dropped at zero).
    var live = 0
    /// Push scan cursor (a slot: 0 is the record, t + 1 is track t) for the background copy.
    var pushCursor: UInt64 = 0
    /// Joining only: one bit per track (and one for the record) set once the location was compared with the peer.
    var compared: [UInt64] = []
    var recordCompared = false
    /// Compared bits set (the inode keeps its slot while any is set).
    var comparedCount = 0

    @inline(__always) func comparedTrack(_ t: UInt64) -> Bool {
        let w = Int(t >> 6)
        return w < compared.count && (compared[w] >> (t & 63)) & 1 == 1
    }

    @inline(__always) func code(_ t: UInt64) -> UInt64 {
        let w = Int(t >> 5)
        return w < codes.count ? (codes[w] >> ((t & 31) * 2)) & 3 : 0
    }

    @inline(__always) mutating func setCode(_ t: UInt64, _ c: UInt64) {
        let w = Int(t >> 5)
        if w >= codes.count { codes.append(contentsOf: repeatElement(0, count: w - codes.count + 1)) }
        let sh = (t & 31) * 2
        codes[w] = (codes[w] & ~(3 << sh)) | (c << sh)
    }

    /// The token of an OOS (code 3) track.
    @inline(__always) func oosTrackToken(_ t: UInt64) -> TokenState {
        exceptions.isEmpty ? oosToken : (exceptions[t] ?? oosToken)
    }

    @inline(__always) func token(ofTrack t: UInt64) -> TokenState {
        let c = code(t)
        return c == oosCode ? oosTrackToken(t) : TokenState(rawValue: UInt8(c))!
    }

    /// Records the token of an OOS track (exception or not).
    mutating func setOOSTrackToken(_ t: UInt64, _ tok: TokenState) {
        if tok != oosToken { exceptions[t] = tok; rebalanceIfNeeded() } else if !exceptions.isEmpty { exceptions[t] = nil }
    }

    /// Keeps exceptions a minority of the OOS tracks: when they are more than half (and not few), the most common
    /// token becomes `oosToken`. Cost O(words of the inode), paid only after at least as many exception inserts.
    mutating func rebalanceIfNeeded() {
        guard exceptions.count > 64 && exceptions.count * 2 > oosTracks else { return }
        var counts = [0, 0, 0]
        counts[Int(oosToken.rawValue)] = oosTracks - exceptions.count
        for (_, tok) in exceptions { counts[Int(tok.rawValue)] += 1 }
        let best = TokenState(rawValue: UInt8(counts.indices.max { counts[$0] < counts[$1] }!))!
        guard best != oosToken else { return }
        var rebuilt: [UInt64: TokenState] = [:]
        for (w, word) in codes.enumerated() {
            var m = word & (word >> 1) & pairLowBits
            while m != 0 {
                let t = UInt64(w) * 32 + UInt64(m.trailingZeroBitCount / 2)
                let tok = exceptions[t] ?? oosToken
                if tok != best { rebuilt[t] = tok }
                m &= m - 1
            }
        }
        oosToken = best
        exceptions = rebuilt
    }
}

/// Reference type on purpose: reads update a one-entry inode cache, so consecutive operations on one file (the common
/// case) skip hashing entirely.
final class LocationBits {
    /// Per-inode bitmaps in slots; `index` maps inode numbers to slots, freed slots are reused.
    private var slots: [InodeBits] = []
    private var index: [UInt64: Int] = [:]
    private var freeSlots: [Int] = []
    private var cacheIno: UInt64 = .max
    private var cacheSlot = -1
    private(set) var oosCount = 0
    private(set) var moosCount = 0
    private(set) var mosCount = 0

    /// Inode numbers with any state.
    var inodeNumbers: [UInt64] { Array(index.keys) }

    @inline(__always)
    private func find(_ ino: UInt64) -> Int? {
        if ino == cacheIno { return cacheSlot }
        guard let i = index[ino] else { return nil }
        cacheIno = ino
        cacheSlot = i
        return i
    }

    private func findOrCreate(_ ino: UInt64) -> Int {
        if let i = find(ino) { return i }
        let i: Int
        if let f = freeSlots.popLast() { i = f; slots[i] = InodeBits() } else { i = slots.count; slots.append(InodeBits()) }
        index[ino] = i
        cacheIno = ino
        cacheSlot = i
        return i
    }

    /// While joining: unknown locations read as MOOS until compared (see the header).
    private(set) var joining = false

    @inline(__always)
    func token(_ l: Location) -> TokenState {
        guard let i = find(l.ino) else { return joining ? .moos : .none }
        let tok = l.slot == 0 ? slots[i].recordToken : slots[i].token(ofTrack: l.slot - 1)
        if tok == .none && joining && !comparedBit(i, l) { return .moos }
        return tok
    }

    /// The token recorded in the bitmap, without the joining default.
    @inline(__always)
    private func explicitToken(_ l: Location) -> TokenState {
        guard let i = find(l.ino) else { return .none }
        if l.slot == 0 { return slots[i].recordToken }
        return slots[i].token(ofTrack: l.slot - 1)
    }

    @inline(__always) private func comparedBit(_ i: Int, _ l: Location) -> Bool {
        l.slot == 0 ? slots[i].recordCompared : slots[i].comparedTrack(l.slot - 1)
    }

    /// Joining: the location was compared with the peer (its data landed, or a local write superseded them).
    func isCompared(_ l: Location) -> Bool {
        guard joining, let i = find(l.ino) else { return false }
        return comparedBit(i, l)
    }

    /// Joining: a location with no explicit state (the default MOOS, never compared).
    func isJoinDefault(_ l: Location) -> Bool {
        joining && explicitToken(l) == .none && !oos(l) && !isCompared(l)
    }

    func startJoining() { joining = true }

    /// Records that the location was compared. `keepMOOS`: a default MOOS becomes explicit (the caller does not clear
    /// it: the peer may still hold the token); otherwise the caller is about to clear it, and the default ends here.
    func setCompared(_ l: Location, keepMOOS: Bool) {
        guard joining else { return }
        if keepMOOS && explicitToken(l) == .none && !isCompared(l) { setToken(l, .moos) }
        let i = findOrCreate(l.ino)
        if comparedBit(i, l) { return }
        if l.slot == 0 { slots[i].recordCompared = true } else {
            let t = l.slot - 1
            let w = Int(t >> 6)
            if w >= slots[i].compared.count {
                slots[i].compared.append(contentsOf: repeatElement(0, count: w - slots[i].compared.count + 1))
            }
            slots[i].compared[w] |= 1 << (t & 63)
        }
        slots[i].comparedCount += 1
    }

    /// Joining: every location with explicit state that was never compared (their MOOS stays, as uncompared).
    func forEachJoinUncompared(_ body: (Location) -> Void) {
        guard joining else { return }
        for (ino, i) in index {
            let b = slots[i]
            if (b.recordToken != .none || b.recordOOS) && !b.recordCompared { body(.inode(ino)) }
            for (w, word) in b.codes.enumerated() where word != 0 {
                for k in 0..<32 as Range<UInt64> where (word >> (k * 2)) & 3 != 0 {
                    let t = UInt64(w) * 32 + k
                    if !b.comparedTrack(t) { body(.track(ino, t)) }
                }
            }
        }
    }

    /// Joining: every location compared so far.
    func forEachCompared(_ body: (Location) -> Void) {
        guard joining else { return }
        for (ino, i) in index where slots[i].comparedCount > 0 {
            let b = slots[i]
            if b.recordCompared { body(.inode(ino)) }
            for (w, word) in b.compared.enumerated() where word != 0 {
                var m = word
                while m != 0 {
                    body(.track(ino, UInt64(w) * 64 + UInt64(m.trailingZeroBitCount)))
                    m &= m - 1
                }
            }
        }
    }

    /// The join is complete: unknown locations read as none again; the compared bits are dropped.
    func endJoining() {
        guard joining else { return }
        joining = false
        var empty: [(UInt64, Int)] = []
        for (ino, i) in index {
            slots[i].compared = []
            slots[i].recordCompared = false
            slots[i].comparedCount = 0
            if slots[i].live == 0 { empty.append((ino, i)) }
        }
        for (ino, i) in empty { settle(i, ino, 0) }
    }

    @inline(__always)
    func oos(_ l: Location) -> Bool {
        guard let i = find(l.ino) else { return false }
        if l.slot == 0 { return slots[i].recordOOS }
        return slots[i].code(l.slot - 1) == oosCode
    }

    func state(_ l: Location) -> LocationState { LocationState(token: token(l), outOfSync: oos(l)) }

    private func count(_ t: TokenState, _ d: Int) {
        switch t {
        case .none: break
        case .moos: moosCount += d
        case .mos: mosCount += d
        }
    }

    /// Returns the previous token.
    @discardableResult
    func setToken(_ l: Location, _ new: TokenState) -> TokenState {
        let old = explicitToken(l)
        let shown = old == .none && joining && !isCompared(l) ? TokenState.moos : old
        // Joining: clearing the default MOOS of a location never compared would leave it MOOS (I7: an uncompared
        // copy is never token none); the caller compares first.
        assert(!(joining && new == .none && shown == .moos && old == .none), "default MOOS cleared before comparison")
        if old == new { return shown }
        count(old, -1); count(new, 1)
        let hasOOS = oos(l)
        let wasLive = old != .none || hasOOS
        let isLive = new != .none || hasOOS
        let i = findOrCreate(l.ino)
        if l.slot == 0 { slots[i].recordToken = new } else {
            let t = l.slot - 1
            if hasOOS { slots[i].setOOSTrackToken(t, new) } else { slots[i].setCode(t, UInt64(new.rawValue)) }
        }
        settle(i, l.ino, (isLive ? 1 : 0) - (wasLive ? 1 : 0))
        return shown
    }

    /// Returns the previous bit.
    @discardableResult
    func setOOS(_ l: Location, _ new: Bool) -> Bool {
        let old = oos(l)
        if old == new { return old }
        // Joining: the default MOOS becomes explicit before the location gets any other state.
        if new && isJoinDefault(l) { setToken(l, .moos) }
        oosCount += new ? 1 : -1
        let tok = explicitToken(l)
        let wasLive = tok != .none || old
        let isLive = tok != .none || new
        let i = findOrCreate(l.ino)
        if l.slot == 0 { slots[i].recordOOS = new } else {
            let t = l.slot - 1
            if new {
                // The first OOS track after none were left sets the inode's bulk token: no exception for it.
                if slots[i].oosTracks == 0 { slots[i].oosToken = tok }
                slots[i].oosTracks += 1
                slots[i].setCode(t, oosCode)
                slots[i].setOOSTrackToken(t, tok)
            } else {
                if !slots[i].exceptions.isEmpty { slots[i].exceptions[t] = nil }
                slots[i].oosTracks -= 1
                slots[i].setCode(t, UInt64(tok.rawValue))
            }
        }
        if new && l.slot < slots[i].pushCursor { slots[i].pushCursor = l.slot }
        settle(i, l.ino, (isLive ? 1 : 0) - (wasLive ? 1 : 0))
        return old
    }

    /// Keeps the live count; an inode with nothing set gives its slot back (memory stays O(active inodes)).
    private func settle(_ i: Int, _ ino: UInt64, _ delta: Int) {
        slots[i].live += delta
        if slots[i].live == 0 && slots[i].comparedCount == 0 {
            slots[i] = InodeBits()
            index[ino] = nil
            freeSlots.append(i)
            if cacheIno == ino { cacheIno = .max; cacheSlot = -1 }
        }
    }

    /// OOS locations of `ino` at or after `fromSlot` (0 = the record, then tracks), in order, up to `limit`.
    func oosLocations(ino: UInt64, fromSlot: UInt64, limit: Int, into out: inout [Location]) {
        guard let i = find(ino), limit > 0 else { return }
        if fromSlot == 0 && slots[i].recordOOS { out.append(.inode(ino)) }
        guard slots[i].oosTracks > 0 else { return }
        let fromTrack = fromSlot == 0 ? 0 : fromSlot - 1
        var w = Int(fromTrack >> 5)
        var first = true
        while w < slots[i].codes.count && out.count < limit {
            let word = slots[i].codes[w]
            var m = word & (word >> 1) & pairLowBits
            if first { m &= ~0 << ((fromTrack & 31) * 2); first = false }
            while m != 0 && out.count < limit {
                out.append(.track(ino, UInt64(w) * 32 + UInt64(m.trailingZeroBitCount / 2)))
                m &= m - 1
            }
            w += 1
        }
    }

    func pushCursor(_ ino: UInt64) -> UInt64 { find(ino).map { slots[$0].pushCursor } ?? 0 }
    func setPushCursor(_ ino: UInt64, _ c: UInt64) {
        if let i = find(ino) { slots[i].pushCursor = c }
    }

    /// Every location with MOS set, in `ino` (for the release scan).
    func mosLocations(ino: UInt64, into out: inout [Location]) {
        guard let i = find(ino) else { return }
        let b = slots[i]
        if b.recordToken == .mos { out.append(.inode(ino)) }
        for (w, word) in b.codes.enumerated() where word != 0 {
            for k in 0..<32 as Range<UInt64> {
                let c = (word >> (k * 2)) & 3
                let t = UInt64(w) * 32 + k
                if c == UInt64(TokenState.mos.rawValue) || (c == oosCode && b.oosTrackToken(t) == .mos) {
                    out.append(.track(ino, t))
                }
            }
        }
    }

    /// Visits every location with a non-none token or OOS (for invariant checks and tests).
    func forEachLive(_ body: (Location, LocationState) -> Void) {
        for (ino, i) in index {
            let b = slots[i]
            if b.recordToken != .none || b.recordOOS {
                body(.inode(ino), LocationState(token: b.recordToken, outOfSync: b.recordOOS))
            }
            for t in 0..<UInt64(b.codes.count * 32) where b.code(t) != 0 {
                body(.track(ino, t), LocationState(token: b.token(ofTrack: t), outOfSync: b.code(t) == oosCode))
            }
        }
    }

    /// Internal consistency of the encoding (for `checkInvariants`): per inode, the OOS track count matches the codes,
    /// and exceptions name only OOS tracks and differ from the inode's bulk token.
    func encodingProblems() -> [String] {
        var v: [String] = []
        for (ino, i) in index {
            let b = slots[i]
            let coded = b.codes.reduce(0) { $0 + ($1 & ($1 >> 1) & pairLowBits).nonzeroBitCount }
            if coded != b.oosTracks { v.append("inode \(ino): \(coded) OOS codes, \(b.oosTracks) counted") }
            for (t, tok) in b.exceptions where b.code(t) != oosCode || tok == b.oosToken {
                v.append("inode \(ino): exception for track \(t) (\(tok)) is not needed")
            }
        }
        return v
    }

    /// Exception entries held (OOS tracks whose token differs from their inode's bulk token): the O(active) part.
    var exceptionCount: Int { index.values.reduce(0) { $0 + slots[$1].exceptions.count } }

    /// Bytes of bitmap words held (for the memory figure).
    var wordBytes: Int { index.values.reduce(0) { $0 + (slots[$1].codes.count + slots[$1].compared.count) * 8 } }
}
