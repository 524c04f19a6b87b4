// Attributes: lookup, forget, getattr, setattr, statfs.
import CFuse3
import Glibc
import TwinNode
import TwinStore

extension FuseAdapter {
    static func installAttributeOperations(_ ops: inout fuse_lowlevel_ops) {
        ops.lookup = { req, parent, name in
            let fs = FuseAdapter.from(req)
            fs.replyEntry(req) { try fs.volume.lookup(parent: parent, name: bytes(name)) }
        }
        ops.forget = { req, ino, count in
            FuseAdapter.from(req).volume.forget(ino, count: count)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, items in
            let fs = FuseAdapter.from(req)
            if let items {
                for i in 0..<count { fs.volume.forget(items[i].ino, count: items[i].nlookup) }
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in
            let fs = FuseAdapter.from(req)
            fs.replyAttr(req) { try fs.volume.getattr(ino) }
        }
        ops.setattr = { req, ino, attr, toSet, fi in
            let fs = FuseAdapter.from(req)
            fs.replyAttr(req) {
                guard let a = attr?.pointee else { throw FSError.invalid }
                var changes = AttributeChanges()
                if toSet & FUSE_SET_ATTR_MODE != 0 { changes.mode = a.st_mode }
                if toSet & FUSE_SET_ATTR_UID != 0 { changes.uid = a.st_uid }
                if toSet & FUSE_SET_ATTR_GID != 0 { changes.gid = a.st_gid }
                if toSet & FUSE_SET_ATTR_SIZE != 0 {
                    guard a.st_size >= 0 else { throw FSError.invalid }
                    changes.size = UInt64(a.st_size)
                }
                if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 {
                    changes.atime = .now
                } else if toSet & FUSE_SET_ATTR_ATIME != 0 {
                    changes.atime = .value(Timestamp(seconds: a.st_atim.tv_sec, nanos: a.st_atim.tv_nsec))
                }
                if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 {
                    changes.mtime = .now
                } else if toSet & FUSE_SET_ATTR_MTIME != 0 {
                    changes.mtime = .value(Timestamp(seconds: a.st_mtim.tv_sec, nanos: a.st_mtim.tv_nsec))
                }
                if toSet & FUSE_SET_ATTR_CTIME != 0 {
                    changes.ctime = Timestamp(seconds: a.st_ctim.tv_sec, nanos: a.st_ctim.tv_nsec)
                }
                return try fs.volume.setattr(ino, changes, handle: fi?.pointee.fh, caller: FuseAdapter.caller(req))
            }
        }
        ops.statfs = { req, _ in
            let fs = FuseAdapter.from(req)
            do {
                let s = try fs.volume.statfs()
                var st = statvfs()
                st.f_bsize = UInt(s.blockBytes)
                st.f_frsize = UInt(s.blockBytes)
                st.f_blocks = UInt(s.blocks)
                st.f_bfree = UInt(s.blocksFree)
                st.f_bavail = UInt(s.blocksAvailable)
                st.f_files = UInt(s.files)
                st.f_ffree = UInt(s.filesFree)
                st.f_favail = UInt(s.filesFree)
                st.f_namemax = UInt(Volume.maxNameBytes)
                fuse_reply_statfs(req, &st)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
    }
}
