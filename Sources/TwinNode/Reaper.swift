// TrashEmptier: one background thread that frees the data files of deleted inodes (Store.emptyTrash), so the
// slow part of deleting a file (the backing filesystem freeing and discarding its blocks) never runs inside a
// filesystem operation or under the volume lock. Never: touch SQLite or anything but the store's trash.
import Glibc
import TwinStore

final class TrashEmptier: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var pending = false

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    /// Something went into the trash: wake the thread (cheap; many pokes make one pass).
    func poke() {
        pthread_mutex_lock(&mutex)
        pending = true
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
    }

    func start(_ store: Store) {
        let context = Unmanaged.passRetained(Context(emptier: self, store: store)).toOpaque()
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
            context.emptier.run(context.store)
            return nil
        }, context)
        pthread_detach(thread)
    }

    private final class Context {
        let emptier: TrashEmptier
        let store: Store
        init(emptier: TrashEmptier, store: Store) {
            self.emptier = emptier
            self.store = store
        }
    }

    private func run(_ store: Store) {
        while true {
            pthread_mutex_lock(&mutex)
            while !pending { pthread_cond_wait(&cond, &mutex) }
            pending = false
            pthread_mutex_unlock(&mutex)
            store.emptyTrash()
        }
    }
}
