// Directories: opendir, readdir, readdirplus, releasedir, fsyncdir.
import CFuse3
import Glibc
import TwinNode
import TwinStore

extension FuseAdapter {
    static func installDirectoryOperations(_ ops: inout fuse_lowlevel_ops) {
        ops.opendir = { req, ino, fi in
            let fs = FuseAdapter.from(req)
            do {
                try fs.volume.opendir(ino)
                fuse_reply_open(req, fi)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.readdir = { req, ino, size, offset, _ in
            FuseAdapter.from(req).replyDirectory(req, ino: ino, size: size, offset: Int64(offset), plus: false)
        }
        ops.readdirplus = { req, ino, size, offset, _ in
            FuseAdapter.from(req).replyDirectory(req, ino: ino, size: size, offset: Int64(offset), plus: true)
        }
        ops.releasedir = { req, _, _ in
            fuse_reply_err(req, 0)
        }
        ops.fsyncdir = { req, _, _, _ in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) { try fs.volume.fsyncDirectory() }
        }
    }

    func replyDirectory(_ req: fuse_req_t?, ino: UInt64, size: Int, offset: Int64, plus: Bool) {
        do {
            // A dirent is at least 24 bytes (+ the entry for plus): never fetch more entries than can fit.
            let perEntry = plus ? 160 : 32
            let limit = max(1, min(size / perEntry + 1, 1024))
            let listing = try volume.readdir(ino, offset: offset, limit: limit, plus: plus)
            var buffer = [CChar](repeating: 0, count: size)
            var used = 0
            var accepted: [UInt64] = []
            buffer.withUnsafeMutableBufferPointer { buf in
                for item in listing {
                    var name = item.name
                    name.append(0)
                    let needed: Int = name.withUnsafeBufferPointer { namePtr in
                        namePtr.baseAddress!.withMemoryRebound(to: CChar.self, capacity: name.count) { cname in
                            let remaining = size - used
                            let dest = buf.baseAddress! + used
                            if plus {
                                var e = entry(of: item.record)
                                return fuse_add_direntry_plus(req, dest, remaining, cname, &e, off_t(item.nextOffset))
                            } else {
                                var st = stat(of: item.record)
                                return fuse_add_direntry(req, dest, remaining, cname, &st, off_t(item.nextOffset))
                            }
                        }
                    }
                    if needed > size - used { break }
                    used += needed
                    if plus && item.name != [0x2e] && item.name != [0x2e, 0x2e] { accepted.append(item.record.ino) }
                }
            }
            if plus { volume.noteLookups(accepted) }
            fuse_reply_buf(req, buffer, used)
        } catch {
            fuse_reply_err(req, errnoValue(of: error))
        }
    }
}
