// WALSyncer: group commit for metadata durability. fsync() of a file needs two flushes — the file's data file
// and the SQLite WAL — and running them one after the other doubles the latency. One thread flushes the WAL
// while the caller flushes the data file; concurrent fsyncs share WAL flushes (a flush that starts after a
// request covers it). Never: touch SQLite's connection (only the WAL's descriptor, via Store.syncMetadata).
import Glibc
import TwinStore

final class WALSyncer: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    /// Flushes asked for so far, and flushes that finished (each covers every request made before it started).
    private var requested: UInt64 = 0
    private var completed: UInt64 = 0
    private var lastError: FSError?
    private var errorGeneration: UInt64 = 0

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    func start(_ store: Store) {
        spawnDetachedThread { self.run(store) }
    }


    /// Asks for a flush of everything committed so far; returns a ticket to wait on.
    func begin() -> UInt64 {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        requested += 1
        pthread_cond_broadcast(&cond)
        return requested
    }

    /// Waits until a flush that covers `ticket` has finished; throws if that flush failed.
    func wait(_ ticket: UInt64) throws {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while completed < ticket { pthread_cond_wait(&cond, &mutex) }
        if let lastError, errorGeneration >= ticket { throw lastError }
    }

    private func run(_ store: Store) {
        while true {
            pthread_mutex_lock(&mutex)
            while completed == requested { pthread_cond_wait(&cond, &mutex) }
            let target = requested
            pthread_mutex_unlock(&mutex)
            var failure: FSError?
            do {
                try store.syncMetadata()
            } catch {
                failure = (error as? FSError) ?? .io
            }
            pthread_mutex_lock(&mutex)
            completed = target
            if let failure {
                lastError = failure
                errorGeneration = target
            }
            pthread_cond_broadcast(&cond)
            pthread_mutex_unlock(&mutex)
        }
    }
}

/// WALCheckpointer: copies the WAL into meta.db on its own thread and its own SQLite connection when a commit
/// finds the WAL large (Store.checkpointWanted), so no filesystem operation waits for a checkpoint's page copies
/// and two syncs under the volume lock. Never: touch the volume's connection.
final class WALCheckpointer: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var pending = false

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    /// Cheap, and many pokes make one checkpoint: called after every commit while the WAL is large.
    func poke() {
        pthread_mutex_lock(&mutex)
        if !pending {
            pending = true
            pthread_cond_signal(&cond)
        }
        pthread_mutex_unlock(&mutex)
    }

    func start(_ store: Store) {
        spawnDetachedThread { self.run(store) }
    }

    private func run(_ store: Store) {
        while true {
            pthread_mutex_lock(&mutex)
            while !pending { pthread_cond_wait(&cond, &mutex) }
            pending = false
            pthread_mutex_unlock(&mutex)
            if !store.checkpointInBackground() { return }
        }
    }
}
