// TwinSim/Scenario.swift: scripted scenarios, written as text, run through the simulator step by step.
// Owns: the scenario language (issue operations, hold and release messages, drop the connection, crash and restart,
// advance time, expect values, bitmap bits and cache states) and its interpreter.
// Must never: bypass the simulator: every scripted action goes through the same paths as a random run, and every
// scenario ends with the same healing phase and final checks.
//
// Language, one command per line ('#' starts a comment):
//   set window=0 prefetch=0 release=off|<us> pushDelay=<us> timeout=<us> cache=on|off disk=<us> latency=<us>
//       writeback=<us> (unsynced writes older than this survive a power loss) diskA=<us> diskB=<us> (one node's
//       disk) apply=<us> (delay between a grant and the operation's writes)
//                                          (before anything else; disk and latency are fixed, not random)
//   A write ino2/t0 ino2/t1:0 ino2 as w1   node A writes: a bare location is a full write, `loc:0,1` writes slots
//   B read ino2/t0 as r1                   node B reads
//   run [<n>ms|<n>us]                      let events happen (default: until settled, at least one tick)
//   hold A / release A                     hold / release messages A sends (released ones keep their order)
//   disconnect / connect                   drop the connection (in-flight messages are lost) / reconnect
//   crash A kill|power / restart A
//   expect r1 = w1 [w2 ...]                r1 read, slot by slot, the stamps of these writes (0 = initial)
//   expect w1 done|pending|failed          the operation's state
//   expect A mos|moos|oos|cached ino2/t0   a bit is set (prefix with ! for clear)
//   expect pulls = <n> / expect marks = <n> / expect marked = <n>   counters since the start

import MirrorCore

public struct ScenarioOutcome: Sendable {
    public var failures: [String] = []
    public var violations: [Violation] = []
    public var trace: [String] = []
    public var metrics = SimMetrics()
    public var passed: Bool { failures.isEmpty && violations.isEmpty }
    public var report: String {
        (failures.map { "EXPECTATION \($0)" } + violations.map { "VIOLATION \($0)" }).joined(separator: "\n")
    }
}

public struct Scenario: Sendable {
    public let name: String
    public let script: String
    public init(_ name: String, _ script: String) { self.name = name; self.script = script }

    /// The fixed layout every scenario uses: ino1 is the directory, ino2 a file with tracks t0..t3 of two slots each,
    /// ino3-ino4 are A's spare inodes, ino5-ino6 B's.
    public static var layoutConfig: SwarmConfig {
        var c = SwarmConfig.derive(seed: 0, workload: .mixed, faults: false)
        c.fileCount = 1; c.tracksPerFile = 4; c.slotsPerTrack = 2; c.directoryCount = 1; c.spareInodesPerNode = 2
        c.latencyMinUs = 1_000; c.latencyJitterUs = 0; c.diskLatencyMaxUs = 100; c.operationCount = 0
        c.predictionWindow = 0
        return c
    }

    public func run(rules: ProtocolRules = .safe) -> ScenarioOutcome {
        var out = ScenarioOutcome()
        var setup = CoreSetup()
        setup.rules = rules
        setup.predictionWindow = 0
        setup.prefetchTracks = 0
        setup.releaseColdAfterUs = nil
        setup.pushDelayUs = 0
        setup.peerTimeoutUs = 10_000_000
        var kernelCache = true
        var config = Self.layoutConfig
        var writebackUs: UInt64? = nil
        var diskUs: [UInt64?] = [nil, nil]
        var applyUs: UInt64? = nil
        var lines: [(Int, [String])] = []
        for (n, raw) in script.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let words = text.split(separator: " ").map(String.init)
            if !words.isEmpty { lines.append((n + 1, words)) }
        }
        // `set` lines configure the core before it boots.
        while let (n, words) = lines.first, words[0] == "set" {
            lines.removeFirst()
            for kv in words.dropFirst() {
                let parts = kv.split(separator: "=").map(String.init)
                guard parts.count == 2 else { out.failures.append("line \(n): bad setting \(kv)"); continue }
                let us = UInt64(parts[1])
                switch parts[0] {
                case "window": setup.predictionWindow = Int(parts[1]) ?? 0
                case "prefetch": setup.prefetchTracks = Int(parts[1]) ?? 0
                case "release": setup.releaseColdAfterUs = us
                case "pushDelay": setup.pushDelayUs = us ?? 0
                case "timeout": setup.peerTimeoutUs = us ?? 10_000_000
                case "cache": kernelCache = parts[1] == "on"
                case "disk": config.diskLatencyMinUs = us ?? 0; config.diskLatencyMaxUs = us ?? 0
                case "latency": config.latencyMinUs = us ?? 1_000
                case "writeback": writebackUs = us
                case "diskA": diskUs[0] = us
                case "diskB": diskUs[1] = us
                case "apply": applyUs = us
                default: out.failures.append("line \(n): unknown setting \(parts[0])")
                }
            }
        }
        var options = SimOptions()
        options.faults = false
        options.trace = true
        options.kernelCache = kernelCache
        options.rules = rules
        let fixed = setup
        options.adjustCore = { $0 = fixed }
        options.writebackUs = writebackUs
        options.diskLatencyUs = diskUs
        options.applyDelayUs = applyUs
        let sim = Simulation(config: config, options: options)
        let layout = sim.layout
        var byName: [String: Int] = [:]
        for id in 0..<layout.locationCount { byName[layout.name(id)] = id }
        var ops: [String: Int] = [:]
        sim.boot(0); sim.boot(1); sim.connect()

        func node(_ s: String) -> Int? { s == "A" ? 0 : s == "B" ? 1 : nil }
        func settle(minUs: SimTimeUs) {
            let floor = sim.nowUs + minUs
            sim.run(untilUs: floor)
            sim.run(untilUs: sim.nowUs + 2_000_000) { !sim.isSettled }
        }

        for (n, w) in lines {
            func bad(_ why: String) { out.failures.append("line \(n) `\(w.joined(separator: " "))`: \(why)") }
            switch w[0] {
            case "A", "B":
                let who = node(w[0])!
                guard w.count >= 3, let asIndex = w.firstIndex(of: "as"), asIndex + 1 < w.count else {
                    bad("expected `<node> read|write <locations> as <name>`"); continue
                }
                guard sim.isUp(who) else { bad("node is down"); continue }
                let locWords = w[2..<asIndex]
                var reads: [Int] = [], writes: [SimOp.Write] = []
                var ok = true
                for lw in locWords {
                    let parts = lw.split(separator: ":").map(String.init)
                    guard let id = byName[parts[0]] else { bad("unknown location \(parts[0])"); ok = false; break }
                    if w[1] == "read" { reads.append(id); continue }
                    if parts.count == 2 {
                        let slots = parts[1].split(separator: ",").compactMap { Int($0) }
                        writes.append(SimOp.Write(location: id, slots: slots, full: slots.count == layout.slotCounts[id]))
                    } else {
                        writes.append(SimOp.Write(location: id, slots: Array(0..<layout.slotCounts[id]), full: true))
                    }
                }
                guard ok, w[1] == "read" || w[1] == "write" else { if ok { bad("unknown verb \(w[1])") }; continue }
                let op = SimOp(category: w[1] == "read" ? .read : .write, reads: reads, writes: writes,
                               label: "\(w[asIndex + 1]): \(w[1]) \(locWords.joined(separator: " "))")
                ops[w[asIndex + 1]] = sim.issue(op, on: who)
            case "run":
                if w.count == 1 { settle(minUs: sim.options.tickPeriodUs); continue }
                let arg = w[1]
                let us: UInt64? = arg.hasSuffix("ms") ? UInt64(arg.dropLast(2)).map { $0 * 1000 }
                    : arg.hasSuffix("us") ? UInt64(arg.dropLast(2)) : nil
                guard let us else { bad("bad duration"); continue }
                sim.run(untilUs: sim.nowUs + us)
            case "hold", "release":
                guard w.count == 2, let who = node(w[1]) else { bad("expected a node"); continue }
                sim.hold(from: who, w[0] == "hold")
            case "disconnect": sim.disconnect(partitionUntilUs: nil, reason: "script")
            case "connect": sim.connect()
            case "crash":
                guard w.count == 3, let who = node(w[1]), w[2] == "kill" || w[2] == "power" else { bad("crash A|B kill|power"); continue }
                sim.crash(who, kind: w[2] == "kill" ? .processKill : .powerLoss)
            case "restart":
                guard w.count == 2, let who = node(w[1]) else { bad("expected a node"); continue }
                sim.restart(who)
            case "expect":
                expect(Array(w.dropFirst()), sim: sim, ops: ops, byName: byName, bad: bad)
            default:
                bad("unknown command")
            }
        }
        // Every scenario ends healed and drained, and passes the same final checks as a random run.
        sim.hold(from: 0, false); sim.hold(from: 1, false)
        sim.startHealing()
        sim.run(untilUs: sim.nowUs + 30_000_000) { !sim.isQuiescent }
        if !sim.isQuiescent { out.failures.append("not quiescent 30s after the script ended") }
        sim.finish()
        out.violations = sim.violations
        out.trace = sim.trace
        out.metrics = sim.metrics
        return out
    }

    private func expect(_ w: [String], sim: Simulation, ops: [String: Int], byName: [String: Int], bad: (String) -> Void) {
        guard w.count >= 2 else { bad("incomplete expectation"); return }
        if w[0] == "pulls" || w[0] == "marks" || w[0] == "marked" {
            guard w.count == 3, let n = Int(w[2]) else { bad("expected a number"); return }
            let m = sim.metrics
            let actual = w[0] == "pulls" ? m.pullRequests : w[0] == "marks" ? m.markRequests : m.markedLocations
            if actual != n { bad("\(w[0]) is \(actual)") }
            return
        }
        if let op = ops[w[0]] {
            let rec = sim.history.op(op)
            switch w[1] {
            case "done": if rec.outcome != .ok { bad("op is \(rec.outcome)") }
            case "pending": if rec.outcome != .pending { bad("op is \(rec.outcome)") }
            case "failed": if case .failed = rec.outcome {} else { bad("op is \(rec.outcome)") }
            case "=":
                guard rec.outcome == .ok else { bad("op is \(rec.outcome)"); return }
                let keys = rec.readKeys
                let want = w[2...].map { $0 == "0" ? WriteStamp(0) : ops[$0].map { WriteStamp($0 + 1) } ?? .max }
                let got = keys.map { rec.reads[$0] ?? .max }
                let wanted = want.count == 1 ? Array(repeating: want[0], count: got.count) : want
                if got != wanted {
                    let names = Dictionary(uniqueKeysWithValues: ops.map { (WriteStamp($0.value + 1), $0.key) })
                    bad("read \(got.map { names[$0] ?? "\($0)" })")
                }
            default: bad("unknown operation expectation \(w[1])")
            }
            return
        }
        guard let who = w[0] == "A" ? 0 : w[0] == "B" ? 1 : nil else { bad("unknown name \(w[0])"); return }
        guard w.count == 3 else { bad("expected `expect A|B [!]mos|moos|oos|cached <location>`"); return }
        var what = w[1]
        let negate = what.hasPrefix("!")
        if negate { what.removeFirst() }
        guard let loc = byName[w[2]] else { bad("unknown location"); return }
        let isSet: Bool
        if what == "cached" {
            isSet = sim.isCached(who, loc)
        } else {
            guard let v = sim.view(who) else { bad("node is down"); return }
            switch what {
            case "mos": isSet = v.mos.contains(loc)
            case "moos": isSet = v.moos.contains(loc)
            case "oos": isSet = v.oos.contains(loc)
            default: bad("unknown bit \(what)"); return
            }
        }
        if isSet == negate { bad("\(what) is \(isSet ? "set" : "clear")") }
    }
}
