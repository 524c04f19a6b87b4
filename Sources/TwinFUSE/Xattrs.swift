// Xattrs: setxattr, getxattr, listxattr, removexattr (size 0 asks for the size, as the kernel's protocol says).
import CFuse3
import CLinuxShims
import Glibc
import TwinNode
import TwinStore

extension FuseAdapter {
    static func installXattrOperations(_ ops: inout fuse_lowlevel_ops) {
        ops.setxattr = { req, ino, name, value, size, flags in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) {
                let bytesValue = size > 0 && value != nil ? Array(UnsafeRawBufferPointer(start: value, count: size)) : []
                try fs.volume.setxattr(
                    ino, name: bytes(name), value: bytesValue, create: flags & twin_XATTR_CREATE != 0,
                    replace: flags & twin_XATTR_REPLACE != 0)
            }
        }
        ops.getxattr = { req, ino, name, size in
            let fs = FuseAdapter.from(req)
            do {
                let value = try fs.volume.getxattr(ino, name: bytes(name))
                fs.replySized(req, value, size: size)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.listxattr = { req, ino, size in
            let fs = FuseAdapter.from(req)
            do {
                var list: [UInt8] = []
                for name in try fs.volume.listxattr(ino) {
                    list += name
                    list.append(0)
                }
                fs.replySized(req, list, size: size)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.removexattr = { req, ino, name in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) { try fs.volume.removexattr(ino, name: bytes(name)) }
        }
    }

    func replySized(_ req: fuse_req_t?, _ value: [UInt8], size: Int) {
        if size == 0 {
            fuse_reply_xattr(req, value.count)
        } else if value.count > size {
            fuse_reply_err(req, FSError.range.errno)
        } else {
            value.withUnsafeBufferPointer { buf in
                buf.baseAddress.map { p in
                    p.withMemoryRebound(to: CChar.self, capacity: value.count) { _ = fuse_reply_buf(req, $0, value.count) }
                } ?? { _ = fuse_reply_buf(req, nil, 0) }()
            }
        }
    }
}
