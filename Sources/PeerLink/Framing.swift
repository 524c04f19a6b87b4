// PeerLink — frames on the byte stream and their integrity seal.
// Frame: [u32 length][u8 frameType][payload][16-byte MAC once the session is open]; length counts everything after
// itself. Owns: reassembly from arbitrary TCP chunks with a hard size limit, and the per-direction sealing.
// Must never: buffer more than one frame's worth past the limit, or accept a sealed frame out of sequence.
import Crypto
import Foundation

public enum FrameLimits {
    /// One track of data (the store's largest, 1 MiB) plus the message header: the largest frame ever sent.
    public static let defaultMaxFrameBytes = (1 << 20) + 64 * 1024
    /// Before authentication a peer is nobody: its frames (hello, proof, refuse) are small.
    public static let handshakeMaxFrameBytes = 1024
    public static let lengthBytes = 4
    public static let macBytes = 16
}

/// A frame as it came off the wire: its type byte and the bytes after it (payload, plus MAC if sealed).
public struct RawFrame: Sendable {
    public var type: UInt8
    public var body: [UInt8]
}

/// Reassembles frames from the chunks TCP delivers. Rejects a length field above the limit as soon as the four
/// length bytes are in, so a forged length never makes it wait for or buffer a huge body.
public struct FrameAssembler {
    public var maxFrameBytes: Int
    var buffer: [UInt8] = []
    var start = 0

    public init(maxFrameBytes: Int) { self.maxFrameBytes = maxFrameBytes }

    /// Bytes received and not yet returned as frames.
    public var bufferedBytes: Int { buffer.count - start }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, nil if more bytes are needed; throws on a length outside the limits.
    public mutating func next() throws(DecodeError) -> RawFrame? {
        let avail = buffer.count - start
        guard avail >= FrameLimits.lengthBytes else { return nil }
        let length = Int(UInt32(buffer[start]) << 24 | UInt32(buffer[start + 1]) << 16
                         | UInt32(buffer[start + 2]) << 8 | UInt32(buffer[start + 3]))
        if length < 1 { throw .undersized(length: length) }
        if length > maxFrameBytes { throw .oversized(length: length, maxBytes: maxFrameBytes) }
        guard avail >= FrameLimits.lengthBytes + length else { return nil }
        let bodyStart = start + FrameLimits.lengthBytes + 1
        let end = start + FrameLimits.lengthBytes + length
        let frame = RawFrame(type: buffer[start + FrameLimits.lengthBytes], body: Array(buffer[bodyStart..<end]))
        start = end
        // Compact once the consumed prefix dominates, so the buffer stays about one frame long.
        if start == buffer.count { buffer.removeAll(keepingCapacity: buffer.capacity <= 4 * maxFrameBytes); start = 0 }
        else if start > buffer.count / 2 { buffer.removeFirst(start); start = 0 }
        return frame
    }

    /// Frames still incomplete when the stream ended are truncated.
    public func finish() throws(DecodeError) {
        if bufferedBytes > 0 { throw .truncated(field: "frame", needed: max(FrameLimits.lengthBytes + 1, bufferedBytes + 1), available: bufferedBytes) }
    }
}

/// Encodes an unsealed frame (handshake only).
public func encodeFrame(_ type: FrameType, _ payload: [UInt8]) -> [UInt8] {
    var w = ByteWriter(capacity: FrameLimits.lengthBytes + 1 + payload.count)
    w.u32(UInt32(1 + payload.count)); w.u8(type.rawValue); w.raw(payload)
    return w.bytes
}

/// Seals frames of one direction: MAC = HMAC-SHA256(key, seq || type || payload) truncated to 16 bytes.
/// The sequence number is implicit (both ends count), so a replayed, dropped or reordered frame fails the MAC.
public struct FrameSealer {
    let key: SymmetricKey
    public private(set) var sequence: UInt64 = 0
    public init(key: SymmetricKey) { self.key = key }

    public mutating func seal(_ type: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(FrameLimits.lengthBytes + 1 + payload.count + FrameLimits.macBytes)
        let length = UInt32(1 + payload.count + FrameLimits.macBytes)
        out.append(UInt8(length >> 24)); out.append(UInt8(truncatingIfNeeded: length >> 16))
        out.append(UInt8(truncatingIfNeeded: length >> 8)); out.append(UInt8(truncatingIfNeeded: length))
        out.append(type)
        out.append(contentsOf: payload)
        let mac = frameMAC(key: key, sequence: sequence, type: type, payload: payload, payloadEnd: payload.count)
        out.append(contentsOf: mac)
        sequence &+= 1
        return out
    }
}

/// Verifies sealed frames of one direction in sequence.
public struct FrameOpener {
    let key: SymmetricKey
    public private(set) var sequence: UInt64 = 0
    public init(key: SymmetricKey) { self.key = key }

    /// Checks the MAC of `frame` and returns the payload length (the payload is `frame.body[0..<length]`).
    public mutating func open(_ frame: RawFrame) throws(DecodeError) -> Int {
        let n = frame.body.count - FrameLimits.macBytes
        if n < 0 { throw .truncated(field: "frame MAC", needed: FrameLimits.macBytes, available: frame.body.count) }
        let expected = frameMAC(key: key, sequence: sequence, type: frame.type, payload: frame.body, payloadEnd: n)
        var diff: UInt8 = 0
        for i in 0..<FrameLimits.macBytes { diff |= expected[i] ^ frame.body[n + i] }   // constant time
        if diff != 0 { throw .badMAC(sequence: sequence) }
        sequence &+= 1
        return n
    }
}

func frameMAC(key: SymmetricKey, sequence: UInt64, type: UInt8, payload: [UInt8], payloadEnd: Int) -> [UInt8] {
    var h = HMAC<SHA256>(key: key)
    var head = ByteWriter(capacity: 9)
    head.u64(sequence); head.u8(type)
    h.update(data: head.bytes)
    payload.withUnsafeBytes { h.update(data: UnsafeRawBufferPointer(rebasing: $0[0..<payloadEnd])) }
    return Array(Array(h.finalize()).prefix(FrameLimits.macBytes))
}
