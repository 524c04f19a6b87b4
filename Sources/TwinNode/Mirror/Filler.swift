// Filler: brings a joining store's copy up to its peer's while the filesystem serves. It walks the tree through
// the Volume like a reader would — every directory, every record, every track — so each step is a planned read
// and the core pulls what this store lacks (a joining store starts with every location maybe-out-of-sync).
// Owns: the walk, its progress figures, and retrying after the peer was away. Must never: write anything, or
// leave a kernel-style reference behind (every lookup it makes is forgotten again).
import Foundation
import Glibc
import TwinStore

public final class Filler: @unchecked Sendable {
    public struct Progress: Sendable {
        public var directories = 0
        public var files = 0
        public var bytes: UInt64 = 0
        public var done = false
        public var retries = 0
    }

    let volume: Volume
    private let lock = NSLock()
    private var progressValue = Progress()
    private var stopped = false
    /// Read size of one step through a file (several tracks, one pull message).
    static let readBytes = 1 << 20
    static let retryPauseMs: UInt32 = 500
    /// Entries asked for per readdir step.
    static let listBatch = 256

    public init(volume: Volume) { self.volume = volume }

    public var progress: Progress {
        lock.lock()
        defer { lock.unlock() }
        return progressValue
    }

    public func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
    }

    private var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopped
    }

    private func note(_ change: (inout Progress) -> Void) {
        lock.lock()
        change(&progressValue)
        lock.unlock()
    }

    /// Walks the whole tree on a thread of its own, then calls `completed` (not called if stopped first).
    public func start(completed: @escaping @Sendable () -> Void) {
        spawnDetachedThread {
            if self.walk() {
                self.note { $0.done = true }
                completed()
            }
        }
    }

    /// Runs `step` until it succeeds: a failure means the peer was away past the timeout, and the walk resumes
    /// where it was once the peer answers again. False if stopped.
    private func retrying<T>(_ step: () throws -> T) -> T? {
        while !isStopped {
            do {
                return try step()
            } catch FSError.notFound {
                return nil
            } catch {
                note { $0.retries += 1 }
                usleep(Self.retryPauseMs * 1000)
            }
        }
        return nil
    }

    private func walk() -> Bool {
        var queue: [UInt64] = [InodeRecord.rootIno]
        while let dir = queue.popLast() {
            if isStopped { return false }
            var offset: Int64 = 2  // after "." and ".."
            while true {
                guard let batch = retrying({ try volume.readdir(dir, offset: offset, limit: Self.listBatch, plus: false) }) else {
                    if isStopped { return false }
                    break  // the directory went away meanwhile
                }
                let entries = batch.filter { $0.name != [0x2e] && $0.name != [0x2e, 0x2e] }
                if entries.isEmpty { break }
                for e in entries {
                    if isStopped { return false }
                    guard let r = retrying({ try volume.lookup(parent: dir, name: e.name) }) else { continue }
                    volume.forget(r.ino, count: 1)
                    if r.isDirectory {
                        queue.append(r.ino)
                    } else if r.kind == .regular {
                        fill(r)
                    }
                }
                offset = entries.last!.nextOffset
            }
            note { $0.directories += 1 }
        }
        return !isStopped
    }

    /// Reads every track of a regular file (pulling those this store lacks).
    private func fill(_ r: InodeRecord) {
        guard let handle = retrying({ try volume.open(r.ino, flags: O_RDONLY) }) else { return }
        defer { volume.release(handle) }
        var offset: UInt64 = 0
        while offset < r.size, !isStopped {
            let n = retrying({ try volume.withReadSource(handle: handle, offset: offset, size: Self.readBytes) { $0.count } }) ?? 0
            if n == 0 { break }
            offset += UInt64(n)
            note { $0.bytes += UInt64(n) }
        }
        note { $0.files += 1 }
    }
}
