// KernelChannel: the session's reads and writes on /dev/fuse, through libfuse's custom I/O hooks, so that the INIT
// reply can ask for FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 has no capability flag for. Without it the
// kernel asks GETXATTR("security.capability") before every write(2) — a whole extra round trip per write — and
// with it the kernel sets SB_NOSEC and stops asking once it saw a file without set-id bits or capabilities.
// In exchange the filesystem kills set-id bits and file capabilities itself on write, truncate and chown
// (Volume does: dropPrivilegeBits, Store.removeCapability).
// Never: change any byte but that one flag, or ask for it when the kernel did not offer it.
import CFuse3
import CLinuxShims
import Glibc
import Synchronization

enum KernelChannel {
    /// FUSE_HANDLE_KILLPRIV_V2 from <linux/fuse.h> (protocol 7.33); a bit of `flags` in fuse_init_in/_out.
    static let handleKillprivV2: UInt32 = 1 << 28
    static let initOpcode: UInt32 = 26
    /// fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid, padding (40 bytes).
    static let inHeaderBytes = 40
    /// fuse_out_header: len u32, error i32, unique u64.
    static let outHeaderBytes = 16
    /// fuse_init_in / fuse_init_out both start major, minor, max_readahead, flags (u32 each).
    static let initFlagsOffset = 12

    /// The INIT request's `unique` once the kernel offered KILLPRIV_V2 (0: not seen or not offered). Requests
    /// are numbered from 1 upward, so no other reply can carry this number while INIT is unanswered.
    static let offeredInitUnique = Atomic<UInt64>(0)

    /// Hooks `session`'s reads and writes on its /dev/fuse descriptor. Call after fuse_session_mount.
    static func install(on session: OpaquePointer) -> Bool {
        var io = fuse_custom_io()
        io.read = { fd, buffer, length, _ in
            let n = Glibc.read(fd, buffer, length)
            if n >= KernelChannel.inHeaderBytes + KernelChannel.initFlagsOffset + 4, let buffer {
                KernelChannel.noteRequest(UnsafeRawPointer(buffer), count: n)
            }
            return n
        }
        io.writev = { fd, iov, count, _ in
            if let iov { KernelChannel.patchInitReply(iov, count: Int(count)) }
            return Glibc.writev(fd, iov, count)
        }
        io.splice_receive = { fdin, offin, fdout, offout, length, flags, _ in
            twin_splice(fdin, offin, fdout, offout, length, flags)
        }
        io.splice_send = { fdin, offin, fdout, offout, length, flags, _ in
            twin_splice(fdin, offin, fdout, offout, length, flags)
        }
        return fuse_session_custom_io(session, &io, fuse_session_fd(session)) == 0
    }

    static func noteRequest(_ bytes: UnsafeRawPointer, count: Int) {
        guard bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == initOpcode else { return }
        let offered = bytes.loadUnaligned(fromByteOffset: inHeaderBytes + initFlagsOffset, as: UInt32.self)
        guard offered & handleKillprivV2 != 0 else { return }
        offeredInitUnique.store(bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self), ordering: .releasing)
    }

    /// Sets the flag in the INIT reply (a header iovec and a fuse_init_out iovec, as libfuse sends it).
    static func patchInitReply(_ iov: UnsafeMutablePointer<iovec>, count: Int) {
        let unique = offeredInitUnique.load(ordering: .acquiring)
        guard unique != 0, count >= 2, iov[0].iov_len >= outHeaderBytes, let header = iov[0].iov_base,
            header.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == unique,
            header.loadUnaligned(fromByteOffset: 4, as: Int32.self) == 0,
            iov[1].iov_len >= initFlagsOffset + 4, let body = iov[1].iov_base
        else { return }
        let flags = body.loadUnaligned(fromByteOffset: initFlagsOffset, as: UInt32.self)
        body.storeBytes(of: flags | handleKillprivV2, toByteOffset: initFlagsOffset, as: UInt32.self)
        offeredInitUnique.store(0, ordering: .releasing)
    }
}
