// FuseSession: mounts a Volume with libfuse3 and runs the multi-threaded request loop until unmount or a signal.
// Order follows shared/notes/swift-libfuse3.md: session -> signal handlers -> mount -> (ready) -> loop -> unmount.
// Never: fork (the CLI daemonizes before any store or session exists), filesystem policy.
import CFuse3
import Glibc
import TwinNode
import TwinStore

public struct FuseError: Error, CustomStringConvertible {
    public let description: String
}

/// The session for notifications from any thread (libfuse serialises writes to /dev/fuse itself).
struct SessionPointer: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

public final class FuseSession {
    private let adapter: FuseAdapter
    private let session: OpaquePointer
    private var argv: [UnsafeMutablePointer<CChar>?]
    public let mountpoint: String
    private var mounted = false

    /// Creates the session and mounts it. `kernelOptions` are -o options for libfuse/the kernel
    /// (default_permissions, allow_other, ro, fsname=...). After this returns the mount is live.
    public init(volume: Volume, mountpoint: String, kernelOptions: [String], options: MountOptions = MountOptions(), debug: Bool = false) throws {
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw FuseError(description: "/dev/fuse is not available (is the fuse module loaded, and may this user open it?)")
        }
        adapter = FuseAdapter(volume: volume, options: options)
        self.mountpoint = mountpoint
        var args = ["twinfs", "-o", kernelOptions.joined(separator: ",")]
        if debug { args.append("-d") }
        argv = args.map { strdup($0) }
        var ops = FuseAdapter.operations()
        let userdata = Unmanaged.passRetained(adapter).toOpaque()
        // fuse_args points into argv only for the duration of fuse_session_new, which copies what it keeps.
        let created = argv.withUnsafeMutableBufferPointer { buffer -> OpaquePointer? in
            var fuseArgs = fuse_args(argc: Int32(buffer.count), argv: buffer.baseAddress, allocated: 0)
            return fuse_session_new(&fuseArgs, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
        }
        guard let se = created else {
            Unmanaged<FuseAdapter>.fromOpaque(userdata).release()
            throw FuseError(description: "libfuse refused the mount options: \(kernelOptions.joined(separator: ","))")
        }
        session = se
        adapter.session = se
        guard fuse_set_signal_handlers(se) == 0 else {
            fuse_session_destroy(se)
            throw FuseError(description: "cannot install signal handlers")
        }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            fuse_remove_signal_handlers(se)
            fuse_session_destroy(se)
            throw FuseError(description: "cannot mount on \(mountpoint) (see the lines above from fusermount3)")
        }
        mounted = true
        let notifier = SessionPointer(se)
        volume.kernelAttributesChanged = { ino in _ = fuse_lowlevel_notify_inval_inode(notifier.pointer, ino, -1, 0) }
        // Without it the mount still works, only with a GETXATTR round trip before every write.
        _ = KernelChannel.install(on: se)
    }

    /// Drops the kernel's cached attributes of `ino` (and so, through auto_inval_data, its stale pages on the
    /// next read). Never blocks on a page or inode lock, so the mirror's executor may call it at any time.
    public func invalidateAttributes(_ ino: UInt64) {
        _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)
    }

    /// Drops the kernel's cached data pages and attributes of `ino` (after a repair rewrote its bytes without a
    /// new mtime). May wait on page locks: never call it from the mirror's executor or a FUSE thread.
    public func invalidateData(_ ino: UInt64) {
        _ = fuse_lowlevel_notify_inval_inode(session, ino, 0, 0)
    }

    /// Serves requests until `fusermount3 -u`, SIGTERM, SIGINT or SIGHUP. Returns after unmounting.
    public func run(maxThreads: Int = 16) -> Int32 {
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_max_threads(config, UInt32(maxThreads))
        fuse_loop_cfg_set_idle_threads(config, 4)
        fuse_loop_cfg_set_clone_fd(config, 0)
        let rc = fuse_session_loop_mt(session, config)
        fuse_loop_cfg_destroy(config)
        unmount()
        return rc
    }

    func unmount() {
        guard mounted else { return }
        mounted = false
        fuse_session_unmount(session)
        fuse_remove_signal_handlers(session)
    }

    deinit {
        unmount()
        fuse_session_destroy(session)
        Unmanaged.passUnretained(adapter).release()
        for p in argv { free(p) }
    }
}
