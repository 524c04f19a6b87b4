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
            // Nothing waits for a reap: gather what arrives in the next moment (an `rm -rf` sends thousands of
            // forgets) into one transaction instead of one each.
            usleep(Self.gatherUs)
            guard volume.backgroundGate.enter() else { return }
            volume.reapQueued()
            volume.store.emptyTrash()
            volume.store.replenishReserve()
            volume.backgroundGate.leave()
        }
    }
}
