// Threads: the node's few long-lived background threads are plain pthreads (started after the CLI forked,
// never before). Never: anything that needs a run loop or Swift concurrency.
import Foundation
import Glibc

/// Runs `body` on a new detached thread.
public func spawnDetachedThread(_ body: @escaping () -> Void) {
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

/// Lets background threads use the store until the volume closes: `close` waits for those inside and turns
/// later ones away, so no thread touches the SQLite connection or the store's descriptors while, or after, the
/// store closes (the connection is opened without SQLite's own mutex).
final class StoreGate: @unchecked Sendable {
    private let condition = NSCondition()
    private var inside = 0
    private var closed = false

    func enter() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if closed { return false }
        inside += 1
        return true
    }

    func leave() {
        condition.lock()
        inside -= 1
        condition.broadcast()
        condition.unlock()
    }

    func close() {
        condition.lock()
        closed = true
        while inside > 0 { condition.wait() }
        condition.unlock()
    }
}
