// TwinSim/EventQueue.swift: the simulated logical clock's agenda.
// Owns: a min-heap of pending simulator events ordered by (time, sequence number).
// Must never: order two events by anything but (time, sequence): that total order is what makes a seed replay exactly.

/// Simulated time in microseconds since the start of a run. Purely logical: it advances only when the queue says so.
public typealias SimTimeUs = UInt64

public struct EventQueue<Payload> {
    public struct Entry {
        public let timeUs: SimTimeUs
        public let sequence: UInt64
        public let payload: Payload
        fileprivate func precedes(_ other: Entry) -> Bool {
            timeUs != other.timeUs ? timeUs < other.timeUs : sequence < other.sequence
        }
    }

    private var heap: [Entry] = []
    private var nextSequence: UInt64 = 0
    public private(set) var nowUs: SimTimeUs = 0

    public init() {}

    public var isEmpty: Bool { heap.isEmpty }
    public var count: Int { heap.count }

    /// Schedules `payload` at `nowUs + delayUs`. Events at the same time run in the order they were scheduled.
    public mutating func schedule(afterUs delayUs: SimTimeUs, _ payload: Payload) {
        schedule(atUs: nowUs + delayUs, payload)
    }

    public mutating func schedule(atUs timeUs: SimTimeUs, _ payload: Payload) {
        precondition(timeUs >= nowUs, "cannot schedule into the past")
        heap.append(Entry(timeUs: timeUs, sequence: nextSequence, payload: payload))
        nextSequence += 1
        siftUp(heap.count - 1)
    }

    /// Removes the earliest event and advances the clock to its time.
    public mutating func pop() -> Entry? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        if !heap.isEmpty { siftDown(0) }
        assert(top.timeUs >= nowUs, "the clock never runs backwards")
        nowUs = top.timeUs
        return top
    }

    public var peekTimeUs: SimTimeUs? { heap.first?.timeUs }

    /// Drops every pending event matching `predicate` (used when a crash erases a node's timers and disk I/O).
    public mutating func removeAll(where predicate: (Payload) -> Bool) {
        let before = heap.count
        heap.removeAll { predicate($0.payload) }
        if heap.count != before { heapify() }
    }

    private mutating func heapify() {
        guard heap.count > 1 else { return }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && heap[left].precedes(heap[smallest]) { smallest = left }
            if right < heap.count && heap[right].precedes(heap[smallest]) { smallest = right }
            if smallest == parent { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
