// Reaper: one background thread that deletes inodes whose last reference went away (in batches, one
// transaction each) and then frees their data files (Store.emptyTrash) — so FORGET and RELEASE never wait for
// a transaction, and the backing filesystem's slow block freeing never runs under the volume lock.
// Never: run filesystem operations; it only finishes deletions the volume already decided.
import Glibc
import TwinStore

final class Reaper: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var pending = false
    static let gatherUs: UInt32 = 20_000
    /// No store change for this long: a pause in which reaping delays no one.
    static let quietMs: UInt64 = 50
    /// Reap anyway after this long, or with this many inodes waiting (their space is not free until then).
    static let maxDelayMs: UInt64 = 2_000
    static let maxBacklog = 8_192
    /// Inodes per transaction, and the pause between two, in which waiting operations take the lock.
    static let chunk = 64
    static let chunkPauseUs: UInt32 = 500

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    /// Work is waiting: wake the thread (cheap; many pokes make one pass).
    func poke() {
        pthread_mutex_lock(&mutex)
        pending = true
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
    }

    func start(_ volume: Volume) {
        spawnDetachedThread { self.run(volume) }
    }

    private func run(_ volume: Volume) {
        while true {
            pthread_mutex_lock(&mutex)
            while !pending { pthread_cond_wait(&cond, &mutex) }
            pending = false
            pthread_mutex_unlock(&mutex)
            // Nothing waits for a reap, and every reap holds the volume lock for a moment: while operations keep
            // coming (an `rm -rf`, thousands of forgets) wait for a pause, as long as the backlog stays small
            // and young; then delete in short transactions, leaving the lock free in between.
            let startNs = MirrorShell.monotonicNs()
            while true {
                usleep(Self.gatherUs)
                let nowNs = MirrorShell.monotonicNs()
                let quiet = nowNs &- volume.lastMutationNs.load(ordering: .relaxed) >= Self.quietMs * 1_000_000
                if quiet || nowNs - startNs >= Self.maxDelayMs * 1_000_000 || volume.reapBacklog >= Self.maxBacklog { break }
            }
            guard volume.backgroundGate.enter() else { return }
            while volume.reapQueued(limit: Self.chunk) == Self.chunk { usleep(Self.chunkPauseUs) }
            volume.store.emptyTrash()
            volume.store.replenishReserve()
            volume.backgroundGate.leave()
        }
    }
}
