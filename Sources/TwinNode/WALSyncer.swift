// WALSyncer: group commit for metadata durability. fsync() of a file needs two flushes — the file's data file
// and the SQLite WAL — unless the store's filesystem lets one serve both (Store.walWriteOutSuffices), and running
// them one after the other doubles the latency. One thread flushes the WAL
// while the caller flushes the data file; concurrent fsyncs share WAL flushes (a flush that starts after a
// request covers it), and a flush that would cover no new commit is skipped. WALCheckpointer (below) copies the
// WAL into meta.db off the FUSE threads. Never: touch the volume's SQLite connection (only the WAL's descriptor,
// via Store.syncMetadata, and the store's checkpoint connection, via Store.checkpointInBackground).
import Glibc
import Synchronization
import TwinStore

final class WALSyncer: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    /// Flushes asked for so far, and flushes that finished (each covers every request made before it started).
    private var requested: UInt64 = 0
    private var completed: UInt64 = 0
    private var lastError: FSError?
    private var errorGeneration: UInt64 = 0
    /// Store commits (Store.commitCount) the last successful flush covered: all of them are durable.
    let durableCommits = Atomic<UInt64>(0)
    /// Flushes of the WAL actually made (for tests and status).
    let flushes = Atomic<UInt64>(0)

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    func start(_ store: Store) {
        spawnDetachedThread { self.run(store) }
    }


    /// Every commit up to `commits` is durable (this thread's flush, or an fsync's one-flush write-out). Never
    /// lowers the count: the two paths finish in any order.
    func noteDurable(_ commits: UInt64) {
        var known = durableCommits.load(ordering: .acquiring)
        while known < commits {
            let (exchanged, original) = durableCommits.compareExchange(
                expected: known, desired: commits, ordering: .acquiringAndReleasing)
            if exchanged { return }
            known = original
        }
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
        /// Commits the last successful flush covered: every commit counted before it started.
        var flushedCommits: UInt64?
        while true {
            pthread_mutex_lock(&mutex)
            while completed == requested { pthread_cond_wait(&cond, &mutex) }
            let target = requested
            pthread_mutex_unlock(&mutex)
            // Every commit a request depends on was counted before the request was made (its reply went out after
            // the commit), so a count unchanged since the last flush began means those commits are durable already:
            // an fsync of a file nothing was committed for since (re-fsync, read-only, unchanged) needs no flush.
            let commits = store.commitCount
            var failure: FSError?
            if commits != flushedCommits {
                do {
                    try store.syncMetadata()
                    flushedCommits = commits
                    noteDurable(commits)
                    flushes.add(1, ordering: .relaxed)
                } catch {
                    failure = (error as? FSError) ?? .io
                }
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

    /// Called every `idleCheckIntervalMs` while no checkpoint is wanted (the volume's truncation when quiet).
    var idle: (() -> Void)?
    static let idleCheckIntervalMs = 100

    func start(_ store: Store) {
        spawnDetachedThread { self.run(store) }
    }

    private func run(_ store: Store) {
        while true {
            pthread_mutex_lock(&mutex)
            while !pending {
                var deadline = timespec()
                clock_gettime(CLOCK_REALTIME, &deadline)
                deadline.tv_nsec += Self.idleCheckIntervalMs * 1_000_000
                if deadline.tv_nsec >= 1_000_000_000 {
                    deadline.tv_sec += 1
                    deadline.tv_nsec -= 1_000_000_000
                }
                if pthread_cond_timedwait(&cond, &mutex, &deadline) == ETIMEDOUT && !pending {
                    pthread_mutex_unlock(&mutex)
                    idle?()
                    pthread_mutex_lock(&mutex)
                }
            }
            pending = false
            pthread_mutex_unlock(&mutex)
            if !store.checkpointInBackground() { return }
        }
    }
}
