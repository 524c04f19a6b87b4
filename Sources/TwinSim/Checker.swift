// TwinSim/Checker.swift: decides whether a run broke one of the promises.
// Owns: the per-register linearizability check over the history, the final durability/convergence check, and the
// vocabulary of violations.
// Must never: trust what a node says about itself for the client-visible checks: those use only the history and the
// final store contents; invariant checks over node state are reported separately as `.invariant`.

public struct Violation: CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        /// A read returned a value older than a write that completed before the read began (G2).
        case staleRead = "stale-read"
        /// A read returned a value that no write produced, or one written only after the read ended.
        case impossibleRead = "impossible-read"
        /// After healing, a register holds a value older than a completed write (G3, durability).
        case lostWrite = "lost-write"
        /// After healing, the two nodes disagree on data or versions (convergence).
        case divergence
        /// After healing, the bitmaps did not drain to a consistent resting state.
        case undrained
        /// An operation did not complete within the progress bound (deadlock or livelock).
        case noProgress = "no-progress"
        /// A protocol invariant over the two nodes' states failed at some step (e.g. MOS on both nodes).
        case invariant
    }
    public let kind: Kind
    public let timeUs: SimTimeUs
    public let detail: String
    public init(_ kind: Kind, atUs: SimTimeUs, _ detail: String) {
        self.kind = kind; self.timeUs = atUs; self.detail = detail
    }
    public var description: String { "[\(kind.rawValue) @\(timeUs)us] \(detail)" }
}

public enum HistoryChecker {
    private struct WriteSpan {
        let stamp: WriteStamp
        let opID: Int
        let startUs: SimTimeUs
        let endUs: SimTimeUs?  // nil: may take effect at any time after start
        /// For writes a power loss undid: they cannot make an older value stale for a read that ended after the loss
        /// (it may have seen the rolled-back contents).
        let rolledBackAtUs: SimTimeUs?
        func supersedes(readEndingAtUs t: SimTimeUs) -> Bool { rolledBackAtUs.map { t < $0 } ?? true }
    }

    /// Checks every successful read in `history`, and the `finalValues` observed on each node after healing
    /// (treated as reads that begin after everything else), against the rule: a read returns the value of the latest
    /// write that completed before the read began, or of a write concurrent with the read.
    public static func check(_ history: History, finalValues: [[RegisterKey: WriteStamp]] = [], finalTimeUs: SimTimeUs = 0)
        -> [Violation]
    {
        var writesByKey: [RegisterKey: [WriteSpan]] = [:]
        var writerOfStamp: [WriteStamp: (op: Int, key: Set<RegisterKey>)] = [:]
        for op in history.ops {
            for (key, stamp) in op.writes {
                writesByKey[key, default: []].append(
                    WriteSpan(stamp: stamp, opID: op.id, startUs: op.invokeUs, endUs: op.effectEndUs,
                              rolledBackAtUs: op.rolledBack[key]))
                writerOfStamp[stamp, default: (op.id, [])].key.insert(key)
            }
        }
        var violations: [Violation] = []

        func checkRead(key: RegisterKey, observed: WriteStamp, readStartUs: SimTimeUs, readEndUs: SimTimeUs,
                       who: String) {
            let writes = writesByKey[key] ?? []
            // The newest point in time by which some completed write is known to have superseded everything that
            // ended before it started: a value is stale if a whole write fits between its writer's end and the read.
            func supersededAfter(_ endUs: SimTimeUs) -> WriteSpan? {
                writes.first { w in
                    guard w.supersedes(readEndingAtUs: readEndUs), let wEnd = w.endUs else { return false }
                    return w.startUs > endUs && wEnd < readStartUs
                }
            }
            if observed == 0 {
                if let w = writes.first(where: { $0.supersedes(readEndingAtUs: readEndUs) && ($0.endUs ?? .max) < readStartUs }) {
                    violations.append(Violation(.staleRead, atUs: readStartUs,
                        "\(who) read initial value of \(key) although op#\(w.opID) (stamp \(w.stamp)) completed at \(w.endUs!)us"))
                }
                return
            }
            guard let writer = writes.first(where: { $0.stamp == observed }) else {
                let elsewhere = writerOfStamp[observed].map { " (stamp belongs to op#\($0.op) on \($0.key.sorted()))" } ?? ""
                violations.append(Violation(.impossibleRead, atUs: readStartUs,
                    "\(who) read stamp \(observed) from \(key), which no write to that register produced\(elsewhere)"))
                return
            }
            if writer.startUs > readEndUs {
                violations.append(Violation(.impossibleRead, atUs: readStartUs,
                    "\(who) read stamp \(observed) from \(key) before op#\(writer.opID) that writes it began"))
                return
            }
            if let writerEnd = writer.endUs, let newer = supersededAfter(writerEnd) {
                violations.append(Violation(.staleRead, atUs: readStartUs,
                    "\(who) read stamp \(observed) (op#\(writer.opID), done \(writerEnd)us) from \(key), but op#\(newer.opID) wrote stamp \(newer.stamp) during [\(newer.startUs), \(newer.endUs!)]us before the read began"))
            }
        }

        for op in history.ops where op.outcome == .ok && !op.readsUnchecked {
            guard let end = op.completeUs else { continue }
            for (key, stamp) in op.reads.sorted(by: { $0.key < $1.key }) {
                checkRead(key: key, observed: stamp, readStartUs: op.invokeUs, readEndUs: end,
                          who: "op#\(op.id) \(op.label) on node \(nodeName(op.node))")
            }
        }
        if !finalValues.isEmpty {
            var final: [Violation] = []
            let staleBefore = violations.count
            for (node, values) in finalValues.enumerated() {
                for key in Set(writesByKey.keys).union(values.keys).sorted() {
                    checkRead(key: key, observed: values[key] ?? 0, readStartUs: finalTimeUs, readEndUs: finalTimeUs,
                              who: "final contents of node \(nodeName(node))")
                }
            }
            // A stale final value means a completed write was lost for good: report it as such.
            for v in violations[staleBefore...] {
                final.append(Violation(v.kind == .staleRead ? .lostWrite : v.kind, atUs: v.timeUs, v.detail))
            }
            violations.removeSubrange(staleBefore...)
            violations.append(contentsOf: final)
        }
        return violations
    }
}

public func nodeName(_ node: Int) -> String { node == 0 ? "A" : "B" }
