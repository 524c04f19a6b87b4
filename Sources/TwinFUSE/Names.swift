// Names: mknod, mkdir, symlink, link, unlink, rmdir, rename, readlink.
import CFuse3
import Glibc
import TwinNode
import TwinStore

extension FuseAdapter {
    static func installNameOperations(_ ops: inout fuse_lowlevel_ops) {
        ops.mknod = { req, parent, name, mode, rdev in
            let fs = FuseAdapter.from(req)
            fs.replyEntry(req) {
                try fs.volume.mknod(parent: parent, name: bytes(name), mode: mode, rdev: UInt64(rdev), caller: FuseAdapter.caller(req))
            }
        }
        ops.mkdir = { req, parent, name, mode in
            let fs = FuseAdapter.from(req)
            fs.replyEntry(req) { try fs.volume.mkdir(parent: parent, name: bytes(name), mode: mode, caller: FuseAdapter.caller(req)) }
        }
        ops.symlink = { req, target, parent, name in
            let fs = FuseAdapter.from(req)
            fs.replyEntry(req) {
                try fs.volume.symlink(target: bytes(target), parent: parent, name: bytes(name), caller: FuseAdapter.caller(req))
            }
        }
        ops.link = { req, ino, newParent, newName in
            let fs = FuseAdapter.from(req)
            fs.replyEntry(req) { try fs.volume.link(ino, newParent: newParent, newName: bytes(newName)) }
        }
        ops.unlink = { req, parent, name in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) { try fs.volume.unlink(parent: parent, name: bytes(name)) }
        }
        ops.rmdir = { req, parent, name in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) { try fs.volume.rmdir(parent: parent, name: bytes(name)) }
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) {
                try fs.volume.rename(
                    parent: parent, name: bytes(name), newParent: newParent, newName: bytes(newName),
                    flags: Volume.RenameFlags(rawValue: flags))
            }
        }
        ops.readlink = { req, ino in
            let fs = FuseAdapter.from(req)
            do {
                var target = try fs.volume.readlink(ino)
                target.append(0)
                target.withUnsafeBufferPointer { buf in
                    buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { _ = fuse_reply_readlink(req, $0) }
                }
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
    }
}
