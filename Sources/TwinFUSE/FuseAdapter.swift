// FuseAdapter: the object libfuse hands back to every callback (session userdata). It turns low-level FUSE
// requests into Volume calls and replies; operations live in one file per group (Attributes, Names, Files,
// Directories, Xattrs). Owns: kernel-facing conventions (timeouts, stat layout, reply buffers).
// Never: filesystem policy (Volume decides), errno choices outside Errno.swift.
import CFuse3
import Glibc
import TwinNode
import TwinStore

public struct MountOptions: Sendable {
    /// Seconds the kernel may cache attributes and names. Without a peer every change passes through this
    /// kernel (the store is locked to this daemon), which updates or drops what it cached itself, so the cache
    /// never goes stale and need not expire soon: with a short timeout an `rm` of files stat'ed a moment ago pays
    /// a LOOKUP per name again. A mirrored volume caches no names and attributes only briefly (below).
    public var attrTimeoutSeconds: Double = 60
    public var entryTimeoutSeconds: Double = 60
    /// A mirrored volume: the peer may change any location once this node grants its mark. The kernel keeps no
    /// names (every lookup asks the daemon, which consults the bitmaps): invalidating one entry takes its
    /// directory's lock, which a FUSE request waiting on the core may hold, so names cannot be invalidated from
    /// the executor. Attributes may be cached: the executor drops an inode's attributes before it acknowledges a
    /// mark of any of its locations (a non-blocking notification; a reply computed earlier is then not cached,
    /// by FUSE's attr_version), and with auto_inval_data a read revalidates them and drops pages when mtime or
    /// size changed. No readdirplus: a listing must not hand out attributes of records not pulled yet.
    public var mirrored = false {
        didSet {
            if mirrored {
                attrTimeoutSeconds = 1
                entryTimeoutSeconds = 0
            }
        }
    }
    public init() {}
}

final class FuseAdapter {
    let volume: Volume
    let options: MountOptions
    var session: OpaquePointer?

    init(volume: Volume, options: MountOptions) {
        self.volume = volume
        self.options = options
    }

    static func from(_ req: fuse_req_t?) -> FuseAdapter {
        Unmanaged<FuseAdapter>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func caller(_ req: fuse_req_t?) -> Caller {
        let ctx = fuse_req_ctx(req)!.pointee
        return Caller(uid: ctx.uid, gid: ctx.gid)
    }

    func stat(of r: InodeRecord) -> stat {
        var st = Glibc.stat()
        st.st_ino = UInt(r.ino)
        st.st_mode = r.mode
        st.st_nlink = UInt(r.nlink)
        st.st_uid = r.uid
        st.st_gid = r.gid
        st.st_size = Int(truncatingIfNeeded: r.size)
        st.st_rdev = UInt(r.rdev)
        st.st_blksize = 4096
        st.st_blocks = r.kind == .regular ? Int(r.allocatedBlocks) : Int((r.size + 511) / 512)
        st.st_atim = timespec(tv_sec: r.atime.seconds, tv_nsec: r.atime.nanos)
        st.st_mtim = timespec(tv_sec: r.mtime.seconds, tv_nsec: r.mtime.nanos)
        st.st_ctim = timespec(tv_sec: r.ctime.seconds, tv_nsec: r.ctime.nanos)
        return st
    }

    func entry(of r: InodeRecord) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = r.ino
        e.generation = 1
        e.attr = stat(of: r)
        e.attr_timeout = options.attrTimeoutSeconds
        e.entry_timeout = options.entryTimeoutSeconds
        return e
    }

    // Reply helpers: each turns a Result into exactly one reply.
    func replyEntry(_ req: fuse_req_t?, _ body: () throws -> InodeRecord) {
        do {
            var e = entry(of: try body())
            fuse_reply_entry(req, &e)
        } catch {
            fuse_reply_err(req, errnoValue(of: error))
        }
    }

    func replyAttr(_ req: fuse_req_t?, _ body: () throws -> InodeRecord) {
        do {
            var st = stat(of: try body())
            fuse_reply_attr(req, &st, options.attrTimeoutSeconds)
        } catch {
            fuse_reply_err(req, errnoValue(of: error))
        }
    }

    func replyOK(_ req: fuse_req_t?, _ body: () throws -> Void) {
        do {
            try body()
            fuse_reply_err(req, 0)
        } catch {
            fuse_reply_err(req, errnoValue(of: error))
        }
    }
}

/// A C string from the kernel as the bytes of a name (names are bytes, not necessarily UTF-8).
func bytes(_ name: UnsafePointer<CChar>?) -> [UInt8] {
    guard let name else { return [] }
    return Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
}

extension FuseAdapter {
    static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        installAttributeOperations(&ops)
        installNameOperations(&ops)
        installFileOperations(&ops)
        installDirectoryOperations(&ops)
        installXattrOperations(&ops)
        ops.`init` = { userdata, conn in
            guard let conn else { return }
            let adapter = Unmanaged<FuseAdapter>.fromOpaque(userdata!).takeUnretainedValue()
            adapter.configure(conn)
        }
        return ops
    }

    func configure(_ conn: UnsafeMutablePointer<fuse_conn_info>) {
        let wanted: UInt32 =
            UInt32(FUSE_CAP_SPLICE_WRITE) | UInt32(FUSE_CAP_SPLICE_MOVE) | UInt32(FUSE_CAP_SPLICE_READ)
            | UInt32(FUSE_CAP_ATOMIC_O_TRUNC) | UInt32(FUSE_CAP_EXPORT_SUPPORT) | UInt32(FUSE_CAP_READDIRPLUS)
            | UInt32(FUSE_CAP_READDIRPLUS_AUTO) | UInt32(FUSE_CAP_PARALLEL_DIROPS) | UInt32(FUSE_CAP_ASYNC_READ)
            | UInt32(FUSE_CAP_AUTO_INVAL_DATA)
        conn.pointee.want |= wanted & conn.pointee.capable
        if options.mirrored {
            conn.pointee.want &= ~(UInt32(FUSE_CAP_READDIRPLUS) | UInt32(FUSE_CAP_READDIRPLUS_AUTO))
        }
        // No writeback cache: the daemon must see every write when it happens, so the mirror can order it.
        conn.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
    }
}
