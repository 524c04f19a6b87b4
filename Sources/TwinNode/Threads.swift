// Threads: the node's few long-lived background threads are plain pthreads (started after the CLI forked,
// never before). Never: anything that needs a run loop or Swift concurrency.
import Glibc

/// Runs `body` on a new detached thread.
func spawnDetachedThread(_ body: @escaping () -> Void) {
    final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box)
    pthread_detach(thread)
}
