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

    @inline(__always)
    func token(_ l: Location) -> TokenState {
        guard let i = find(l.ino) else { return .none }
        if l.slot == 0 { return slots[i].recordToken }
        let t = l.slot - 1
        let w = Int(t >> 5)
        guard w < slots[i].tokens.count else { return .none }
        return TokenState(rawValue: UInt8((slots[i].tokens[w] >> ((t & 31) * 2)) & 3))!
    }

    @inline(__always)
    func oos(_ l: Location) -> Bool {
        guard let i = find(l.ino) else { return false }
        if l.slot == 0 { return slots[i].recordOOS }
        let t = l.slot - 1
        let w = Int(t >> 6)
        guard w < slots[i].oos.count else { return false }
        return (slots[i].oos[w] >> (t & 63)) & 1 == 1
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
        let old = token(l)
        if old == new { return old }
        count(old, -1); count(new, 1)
        let hasOOS = oos(l)
        let wasLive = old != .none || hasOOS
        let isLive = new != .none || hasOOS
        let i = findOrCreate(l.ino)
        if l.slot == 0 { slots[i].recordToken = new } else {
            let t = l.slot - 1
            let w = Int(t >> 5)
            if w >= slots[i].tokens.count {
                slots[i].tokens.append(contentsOf: repeatElement(0, count: w - slots[i].tokens.count + 1))
            }
            let sh = (t & 31) * 2
            slots[i].tokens[w] = (slots[i].tokens[w] & ~(3 << sh)) | (UInt64(new.rawValue) << sh)
        }
        settle(i, l.ino, (isLive ? 1 : 0) - (wasLive ? 1 : 0))
        return old
    }

    /// Returns the previous bit.
    @discardableResult
    func setOOS(_ l: Location, _ new: Bool) -> Bool {
        let old = oos(l)
        if old == new { return old }
        oosCount += new ? 1 : -1
        let tok = token(l)
        let wasLive = tok != .none || old
        let isLive = tok != .none || new
        let i = findOrCreate(l.ino)
        if l.slot == 0 { slots[i].recordOOS = new } else {
            let t = l.slot - 1
            let w = Int(t >> 6)
            if w >= slots[i].oos.count {
                slots[i].oos.append(contentsOf: repeatElement(0, count: w - slots[i].oos.count + 1))
            }
            if new { slots[i].oos[w] |= 1 << (t & 63) } else { slots[i].oos[w] &= ~(1 << (t & 63)) }
        }
        if new && l.slot < slots[i].pushCursor { slots[i].pushCursor = l.slot }
        settle(i, l.ino, (isLive ? 1 : 0) - (wasLive ? 1 : 0))
        return old
    }

    /// Keeps the live count; an inode with nothing set gives its slot back (memory stays O(active inodes)).
    private func settle(_ i: Int, _ ino: UInt64, _ delta: Int) {
        slots[i].live += delta
        if slots[i].live == 0 {
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
        let fromTrack = fromSlot == 0 ? 0 : fromSlot - 1
        var w = Int(fromTrack >> 6)
        var first = true
        while w < slots[i].oos.count && out.count < limit {
            var word = slots[i].oos[w]
            if first { word &= ~0 << (fromTrack & 63); first = false }
            while word != 0 && out.count < limit {
                let bit = UInt64(word.trailingZeroBitCount)
                out.append(.track(ino, UInt64(w) * 64 + bit))
                word &= word - 1
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
        if slots[i].recordToken == .mos { out.append(.inode(ino)) }
        for (w, word) in slots[i].tokens.enumerated() where word != 0 {
            for k in 0..<32 where (word >> (UInt64(k) * 2)) & 3 == UInt64(TokenState.mos.rawValue) {
                out.append(.track(ino, UInt64(w) * 32 + UInt64(k)))
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
            let n = max(b.tokens.count * 32, b.oos.count * 64)
            for t in 0..<n {
                let l = Location.track(ino, UInt64(t))
                let s = state(l)
                if s.token != .none || s.outOfSync { body(l, s) }
            }
        }
    }

    /// Bytes of bitmap words held (for the memory figure).
    var wordBytes: Int { index.values.reduce(0) { $0 + (slots[$1].tokens.count + slots[$1].oos.count) * 8 } }
}
