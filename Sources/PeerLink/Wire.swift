// PeerLink — byte-level primitives of the wire format (big-endian, fixed width, explicit lengths).
// Owns: ByteWriter/ByteReader and the typed DecodeError every decoder in this module throws.
// Must never: trap on any input, or allocate from a length field before checking the bytes are actually there.

/// Why a frame or payload could not be decoded. Every decoder failure is one of these; none is a crash.
public enum DecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The input ended `needed` bytes into a field that had only `available` bytes left.
    case truncated(field: String, needed: Int, available: Int)
    /// A frame's length field exceeds the limit in force (no byte of its body is buffered).
    case oversized(length: Int, maxBytes: Int)
    /// A frame's length field is below the smallest legal frame.
    case undersized(length: Int)
    case unknownFrameType(UInt8)
    /// A frame type that is legal on the wire but not in the current phase (e.g. a message before authentication).
    case unexpectedFrameType(UInt8, phase: String)
    /// An enum tag, flag byte or boolean with a value this version does not define.
    case badTag(field: String, value: UInt8)
    /// A count or length larger than what the rest of the frame could possibly hold, or than a protocol limit.
    case badCount(field: String, count: Int, limit: Int)
    case badUTF8(field: String)
    case badMagic(UInt32)
    /// The payload decoded completely but bytes were left over.
    case trailingBytes(Int)
    /// The frame MAC did not verify: corrupted, forged, replayed or reordered (the sequence number is in the MAC).
    case badMAC(sequence: UInt64)

    public var description: String {
        switch self {
        case let .truncated(f, n, a): return "truncated frame: \(f) needs \(n) bytes, \(a) left"
        case let .oversized(l, m): return "oversized frame: length \(l) > limit \(m)"
        case let .undersized(l): return "undersized frame: length \(l)"
        case let .unknownFrameType(t): return "unknown frame type 0x\(String(t, radix: 16))"
        case let .unexpectedFrameType(t, p): return "frame type 0x\(String(t, radix: 16)) not allowed \(p)"
        case let .badTag(f, v): return "bad value \(v) for \(f)"
        case let .badCount(f, c, l): return "bad count \(c) for \(f) (limit \(l))"
        case let .badUTF8(f): return "invalid UTF-8 in \(f)"
        case let .badMagic(m): return "bad magic 0x\(String(m, radix: 16)) (not a twinfs peer)"
        case let .trailingBytes(n): return "\(n) trailing bytes after the payload"
        case let .badMAC(s): return "frame integrity check failed at sequence \(s) (corrupted, forged, replayed or reordered)"
        }
    }
}

/// Appends fixed-width big-endian fields to a growing byte array.
public struct ByteWriter {
    public var bytes: [UInt8]
    public init(capacity: Int = 64) { bytes = []; bytes.reserveCapacity(capacity) }

    @inline(__always) public mutating func u8(_ v: UInt8) { bytes.append(v) }
    @inline(__always) public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    @inline(__always) public mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v)) }
    @inline(__always) public mutating func u32(_ v: UInt32) {
        bytes.append(UInt8(v >> 24)); bytes.append(UInt8(truncatingIfNeeded: v >> 16))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v))
    }
    @inline(__always) public mutating func u64(_ v: UInt64) { u32(UInt32(v >> 32)); u32(UInt32(truncatingIfNeeded: v)) }
    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    /// u32 length, then the bytes.
    public mutating func blob(_ b: [UInt8]) { u32(UInt32(b.count)); bytes.append(contentsOf: b) }
    /// u16 length, then UTF-8. Callers bound the length (handshake strings are short by contract).
    public mutating func string(_ s: String) { let u = Array(s.utf8); u16(UInt16(min(u.count, Int(UInt16.max)))); bytes.append(contentsOf: u.prefix(Int(UInt16.max))) }
}

/// Reads fixed-width big-endian fields; every read checks the remaining length first and throws `.truncated`.
public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var index: Int
    public let end: Int

    public init(_ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) {
        self.bytes = bytes; self.index = start; self.end = end ?? bytes.count
        precondition(start >= 0 && start <= self.end && self.end <= bytes.count, "reader bounds outside the array")
    }

    @inline(__always) public var remaining: Int { end - index }

    @inline(__always) mutating func need(_ n: Int, _ field: String) throws(DecodeError) {
        if remaining < n { throw .truncated(field: field, needed: n, available: remaining) }
    }
    @inline(__always) public mutating func u8(_ field: String) throws(DecodeError) -> UInt8 {
        try need(1, field); defer { index += 1 }; return bytes[index]
    }
    public mutating func bool(_ field: String) throws(DecodeError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let v: throw .badTag(field: field, value: v)
        }
    }
    @inline(__always) public mutating func u16(_ field: String) throws(DecodeError) -> UInt16 {
        try need(2, field); defer { index += 2 }
        return UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1])
    }
    @inline(__always) public mutating func u32(_ field: String) throws(DecodeError) -> UInt32 {
        try need(4, field); defer { index += 4 }
        return UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8 | UInt32(bytes[index + 3])
    }
    @inline(__always) public mutating func u64(_ field: String) throws(DecodeError) -> UInt64 {
        let hi = try u32(field); let lo = try u32(field)
        return UInt64(hi) << 32 | UInt64(lo)
    }
    public mutating func raw(_ n: Int, _ field: String) throws(DecodeError) -> [UInt8] {
        try need(n, field); defer { index += n }
        return Array(bytes[index..<(index + n)])
    }
    /// u32 length, then that many bytes; the length is checked against what is left before anything is copied.
    public mutating func blob(_ field: String, maxBytes: Int) throws(DecodeError) -> [UInt8] {
        let n = Int(try u32(field))
        if n > maxBytes { throw .badCount(field: field, count: n, limit: maxBytes) }
        return try raw(n, field)
    }
    public mutating func string(_ field: String, maxBytes: Int) throws(DecodeError) -> String {
        let n = Int(try u16(field))
        if n > maxBytes { throw .badCount(field: field, count: n, limit: maxBytes) }
        let u = try raw(n, field)
        guard let s = String(validating: u, as: UTF8.self) else { throw .badUTF8(field: field) }
        return s
    }
    /// A u32 element count whose elements take at least `minElementBytes` each: rejected unless the rest of the
    /// input could hold them, so a forged count never reserves memory.
    public mutating func count(_ field: String, minElementBytes: Int) throws(DecodeError) -> Int {
        let n = Int(try u32(field))
        let limit = remaining / max(1, minElementBytes)
        if n > limit { throw .badCount(field: field, count: n, limit: limit) }
        return n
    }
    public func expectEnd() throws(DecodeError) {
        if remaining != 0 { throw .trailingBytes(remaining) }
    }
}
