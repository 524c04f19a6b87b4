// MirrorCore — dense per-inode bitmaps for the token (none/MOOS/MOS, 2 bits) and OOS (1 bit) of every location.
// Owns: the bulk memory of the protocol: 3 bits per track in memory (16M tracks = 6 MiB), nothing for untouched
// inodes. Illegal MOS+MOOS is unrepresentable: the token is one 2-bit enum.
// Must never: hold per-location objects for the bulk; in-flight detail lives in the core's small dictionaries.

struct InodeBits {
    /// Token of the inode record (2 bits) and its OOS bit.
    var recordToken: TokenState = .none
    var recordOOS = false
    /// Tracks: 2 bits each, 32 per word (value = TokenState.rawValue).
    var tokens: [UInt64] = []
    /// Tracks: 1 bit each, 64 per word.
    var oos: [UInt64] = []
    /// Number of locations of this inode with a non-none token or OOS (the inode is dropped at zero).
    var live = 0
    /// Push scan cursor (a slot: 0 is the record, t + 1 is track t) for the background copy.
    var pushCursor: UInt64 = 0
}

struct LocationBits {
    var inodes: [UInt64: InodeBits] = [:]
    private(set) var oosCount = 0
    private(set) var moosCount = 0
    private(set) var mosCount = 0

    @inline(__always)
    func token(_ l: Location) -> TokenState {
        guard let b = inodes[l.ino] else { return .none }
        if l.slot == 0 { return b.recordToken }
        let t = l.slot - 1
        let w = Int(t >> 5)
        guard w < b.tokens.count else { return .none }
        return TokenState(rawValue: UInt8((b.tokens[w] >> ((t & 31) * 2)) & 3))!
    }

    @inline(__always)
    func oos(_ l: Location) -> Bool {
        guard let b = inodes[l.ino] else { return false }
        if l.slot == 0 { return b.recordOOS }
        let t = l.slot - 1
        let w = Int(t >> 6)
        guard w < b.oos.count else { return false }
        return (b.oos[w] >> (t & 63)) & 1 == 1
    }

    func state(_ l: Location) -> LocationState { LocationState(token: token(l), outOfSync: oos(l)) }

    private mutating func count(_ t: TokenState, _ d: Int) {
        switch t {
        case .none: break
        case .moos: moosCount += d
        case .mos: mosCount += d
        }
    }

    /// Returns the previous token.
    @discardableResult
    mutating func setToken(_ l: Location, _ new: TokenState) -> TokenState {
        let old = token(l)
        if old == new { return old }
        count(old, -1); count(new, 1)
        let wasLive = old != .none || oos(l)
        let isLive = new != .none || oos(l)
        modify(l.ino) { b in
            if l.slot == 0 { b.recordToken = new } else {
                let t = l.slot - 1
                let w = Int(t >> 5)
                if w >= b.tokens.count { b.tokens.append(contentsOf: repeatElement(0, count: w - b.tokens.count + 1)) }
                let sh = (t & 31) * 2
                b.tokens[w] = (b.tokens[w] & ~(3 << sh)) | (UInt64(new.rawValue) << sh)
            }
            b.live += (isLive ? 1 : 0) - (wasLive ? 1 : 0)
        }
        return old
    }

    /// Returns the previous bit.
    @discardableResult
    mutating func setOOS(_ l: Location, _ new: Bool) -> Bool {
        let old = oos(l)
        if old == new { return old }
        oosCount += new ? 1 : -1
        let tok = token(l)
        let wasLive = tok != .none || old
        let isLive = tok != .none || new
        modify(l.ino) { b in
            if l.slot == 0 { b.recordOOS = new } else {
                let t = l.slot - 1
                let w = Int(t >> 6)
                if w >= b.oos.count { b.oos.append(contentsOf: repeatElement(0, count: w - b.oos.count + 1)) }
                if new { b.oos[w] |= 1 << (t & 63) } else { b.oos[w] &= ~(1 << (t & 63)) }
            }
            if new && l.slot < b.pushCursor { b.pushCursor = l.slot }
            b.live += (isLive ? 1 : 0) - (wasLive ? 1 : 0)
        }
        return old
    }

    @inline(__always)
    private mutating func modify(_ ino: UInt64, _ f: (inout InodeBits) -> Void) {
        f(&inodes[ino, default: InodeBits()])
        if inodes[ino]!.live == 0 { inodes[ino] = nil }
    }

    /// OOS locations of `ino` at or after `fromSlot` (0 = the record, then tracks), in order, up to `limit`.
    func oosLocations(ino: UInt64, fromSlot: UInt64, limit: Int, into out: inout [Location]) {
        guard let b = inodes[ino], limit > 0 else { return }
        if fromSlot == 0 && b.recordOOS { out.append(.inode(ino)) }
        let fromTrack = fromSlot == 0 ? 0 : fromSlot - 1
        var w = Int(fromTrack >> 6)
        var first = true
        while w < b.oos.count && out.count < limit {
            var word = b.oos[w]
            if first { word &= ~0 << (fromTrack & 63); first = false }
            while word != 0 && out.count < limit {
                let bit = UInt64(word.trailingZeroBitCount)
                out.append(.track(ino, UInt64(w) * 64 + bit))
                word &= word - 1
            }
            w += 1
        }
    }

    func pushCursor(_ ino: UInt64) -> UInt64 { inodes[ino]?.pushCursor ?? 0 }
    mutating func setPushCursor(_ ino: UInt64, _ c: UInt64) {
        if inodes[ino] != nil { inodes[ino]!.pushCursor = c }
    }

    /// Every location with MOS set, in `ino` (for the release scan).
    func mosLocations(ino: UInt64, into out: inout [Location]) {
        guard let b = inodes[ino] else { return }
        if b.recordToken == .mos { out.append(.inode(ino)) }
        for (w, word) in b.tokens.enumerated() where word != 0 {
            for i in 0..<32 where (word >> (UInt64(i) * 2)) & 3 == UInt64(TokenState.mos.rawValue) {
                out.append(.track(ino, UInt64(w) * 32 + UInt64(i)))
            }
        }
    }

    /// Visits every location with a non-none token or OOS (for invariant checks and tests).
    func forEachLive(_ body: (Location, LocationState) -> Void) {
        for (ino, b) in inodes {
            if b.recordToken != .none || b.recordOOS {
                body(.inode(ino), LocationState(token: b.recordToken, outOfSync: b.recordOOS))
            }
            let n = max(b.tokens.count * 32, b.oos.count * 64)
            for t in 0..<n {
                let l = Location.track(ino, UInt64(t))
                let s = state(l)
                if s.token != .none || s.outOfSync { body(l, s) }
            }
        }
    }

    /// Bytes of bitmap words held (for the memory figure).
    var wordBytes: Int { inodes.values.reduce(0) { $0 + ($1.tokens.count + $1.oos.count) * 8 } }
}
