// Files: open, create, read (spliced from the data file), write_buf, release, fsync, fallocate, lseek.
import CFuse3
import CLinuxShims
import Glibc
import TwinNode
import TwinStore

/// A one-buffer bufvec over a file descriptor at a position (FUSE_BUFVEC_INIT cannot be imported).
func fdBuffer(fd: Int32, position: UInt64, size: Int) -> fuse_bufvec {
    var v = fuse_bufvec()
    v.count = 1
    v.idx = 0
    v.off = 0
    v.buf.size = size
    v.buf.flags = fuse_buf_flags(rawValue: FUSE_BUF_IS_FD.rawValue | FUSE_BUF_FD_SEEK.rawValue)
    v.buf.fd = fd
    v.buf.pos = off_t(position)
    return v
}

extension FuseAdapter {
    static func installFileOperations(_ ops: inout fuse_lowlevel_ops) {
        ops.open = { req, ino, fi in
            let fs = FuseAdapter.from(req)
            do {
                guard let fi else { throw FSError.invalid }
                fi.pointee.fh = try fs.volume.open(ino, flags: fi.pointee.flags, caller: FuseAdapter.caller(req))
                // This node's page cache stays valid across opens: every change passes through this kernel,
                // and the mirror invalidates it explicitly before the peer may change a location.
                fi.pointee.keep_cache = 1
                fuse_reply_open(req, fi)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.create = { req, parent, name, mode, fi in
            let fs = FuseAdapter.from(req)
            do {
                guard let fi else { throw FSError.invalid }
                let (record, handle) = try fs.volume.create(
                    parent: parent, name: bytes(name), mode: mode, flags: fi.pointee.flags, caller: FuseAdapter.caller(req))
                fi.pointee.fh = handle
                fi.pointee.keep_cache = 1
                var e = fs.entry(of: record)
                fuse_reply_create(req, &e, fi)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.read = { req, _, size, offset, fi in
            let fs = FuseAdapter.from(req)
            do {
                guard let fi, offset >= 0 else { throw FSError.invalid }
                // The reply is sent while the read's locations are held: the peer cannot change them mid-splice.
                try fs.volume.withReadSource(handle: fi.pointee.fh, offset: UInt64(offset), size: size) { source in
                    if source.count == 0 {
                        fuse_reply_buf(req, nil, 0)
                        return
                    }
                    var buffer = fdBuffer(fd: source.fd, position: UInt64(offset), size: source.count)
                    fuse_reply_data(req, &buffer, FUSE_BUF_SPLICE_MOVE)
                }
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        ops.write_buf = { req, _, source, offset, fi in
            let fs = FuseAdapter.from(req)
            do {
                guard let fi, let source, offset >= 0 else { throw FSError.invalid }
                let handle = fi.pointee.fh
                let size = fuse_buf_size(source)
                let written = try fs.volume.withWriteTarget(
                    handle: handle, offset: UInt64(offset), count: size, caller: FuseAdapter.caller(req)
                ) { fd, position in
                    var destination = fdBuffer(fd: fd, position: position, size: size)
                    let n = fuse_buf_copy(&destination, source, fuse_buf_copy_flags(rawValue: 0))
                    guard n >= 0 else { throw FSError.fromErrno(Int32(-n)) }
                    return n
                }
                fuse_reply_write(req, written)
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
        // No flush: nothing happens at close(2) that RELEASE does not do (no writeback cache, POSIX locks are
        // the kernel's), and libfuse answers ENOSYS once, after which the kernel stops sending FLUSH: one round
        // trip less per close.
        ops.flush = nil
        ops.release = { req, _, fi in
            if let fi { FuseAdapter.from(req).volume.release(fi.pointee.fh) }
            fuse_reply_err(req, 0)
        }
        ops.fsync = { req, ino, datasync, fi in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) { try fs.volume.fsync(handle: fi?.pointee.fh, ino: ino, dataOnly: datasync != 0) }
        }
        ops.fallocate = { req, _, mode, offset, length, fi in
            let fs = FuseAdapter.from(req)
            fs.replyOK(req) {
                guard let fi, offset >= 0, length >= 0 else { throw FSError.invalid }
                try fs.volume.fallocate(
                    handle: fi.pointee.fh, mode: Volume.FallocateMode(rawValue: mode), offset: UInt64(offset), length: UInt64(length))
            }
        }
        ops.lseek = { req, _, offset, whence, fi in
            let fs = FuseAdapter.from(req)
            do {
                guard let fi, offset >= 0 else { throw FSError.invalid }
                let mode: Volume.SeekWhence
                switch whence {
                case twin_SEEK_DATA: mode = .data
                case twin_SEEK_HOLE: mode = .hole
                default: throw FSError.invalid
                }
                let result = try fs.volume.seek(handle: fi.pointee.fh, offset: UInt64(offset), whence: mode)
                fuse_reply_lseek(req, off_t(result))
            } catch {
                fuse_reply_err(req, errnoValue(of: error))
            }
        }
    }
}
