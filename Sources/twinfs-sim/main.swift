// twinfs-sim: command line for the deterministic simulator (replay one seed, sweep seeds, report workload figures).
// Owns: argument parsing, output formatting, exit codes.
// Must never: add behaviour of its own to a run: everything a run does comes from TwinSim and the seed.

import ArgumentParser
import MirrorCore
import TwinSim
#if canImport(Glibc)
import Glibc
#endif

/// Swift seeds hashing per process; a replay must not depend on it (the core may iterate hashed collections), so the
/// tool re-executes itself once with deterministic hashing.
func ensureDeterministicHashing() {
    #if canImport(Glibc)
    guard getenv("SWIFT_DETERMINISTIC_HASHING") == nil else { return }
    setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // If exec fails we carry on; replays within this process are still exact for the simulator's own code.
    #endif
}

/// If the core traps (an assertion), the signal handler names the seed that was running, so it can be replayed.
nonisolated(unsafe) var crashNote = [UInt8](repeating: 0, count: 96)
nonisolated(unsafe) var crashNoteLength = 0

func announce(_ seed: UInt64) {
    let text = Array("\ntwinfs-sim: the core trapped while running seed \(seed); replay with --seed \(seed) --trace\n".utf8)
    crashNoteLength = min(text.count, crashNote.count)
    for i in 0..<crashNoteLength { crashNote[i] = text[i] }
}

func installTrapHandler() {
    for sig in [SIGILL, SIGTRAP, SIGABRT, SIGSEGV] {
        signal(sig) { s in
            _ = crashNote.withUnsafeBufferPointer { write(2, $0.baseAddress, crashNoteLength) }
            signal(s, SIG_DFL)
            raise(s)
        }
    }
}

struct SeedRange: ExpressibleByArgument {
    let range: ClosedRange<UInt64>
    init?(argument: String) {
        let parts = argument.split(separator: "..", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b else { return nil }
        range = a...b
    }
}

extension WorkloadKind: ExpressibleByArgument {}

enum Rule: String, CaseIterable, ExpressibleByArgument {
    case giveUpTokenOnPull, ignoreStaleAcks, persistMOOSBeforeAck, persistSupersetBeforeWrite, invalidateBeforeAck,
         ignoreStalePushes, answerInSyncOnlyIfKnown, tieBreakConcurrentMarks
    func switchOff(_ r: inout ProtocolRules) {
        switch self {
        case .giveUpTokenOnPull: r.giveUpTokenOnPull = false
        case .ignoreStaleAcks: r.ignoreStaleAcks = false
        case .persistMOOSBeforeAck: r.persistMOOSBeforeAck = false
        case .persistSupersetBeforeWrite: r.persistSupersetBeforeWrite = false
        case .invalidateBeforeAck: r.invalidateBeforeAck = false
        case .ignoreStalePushes: r.ignoreStalePushes = false
        case .answerInSyncOnlyIfKnown: r.answerInSyncOnlyIfKnown = false
        case .tieBreakConcurrentMarks: r.tieBreakConcurrentMarks = false
        }
    }
}

struct TwinfsSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twinfs-sim",
        abstract: "Deterministic simulation of the twinfs mirror protocol: two nodes, one seed, many faults.",
        discussion: """
            twinfs-sim --seed 42 --trace     replay one seed exactly, printing every event
            twinfs-sim --seeds 0..1999       sweep; exits 1 and prints the failing seeds on any violation
            twinfs-sim --report --seeds 0..99  round trips, marks and pulls per workload
            twinfs-sim --workload sequential   the same figures for one workload (seeds 0..99)
            """)

    @Option(help: "Run this one seed.") var seed: UInt64?
    @Option(help: "Sweep an inclusive range of seeds, e.g. 0..1999.") var seeds: SeedRange?
    @Flag(help: "Print the trace of every event (with --seed).") var trace = false
    @Flag(help: "Print the workload report (figures per workload) for the seed range instead of a sweep.") var report = false
    @Option(help: "Force this workload instead of the seed's choice (sequential, random, create-heavy, contending, mixed).")
    var workload: WorkloadKind?
    @Flag(help: "No network or crash faults.") var noFaults = false
    @Flag(help: "Skip the per-step invariant checks (only client-visible and final checks judge the run).")
    var noInvariants = false
    @Flag(help: "Focus on durability races: node A's disk 30x slower, crashes every few ms, all power losses.")
    var harshDisks = false
    @Flag(help: "Do not model the kernel cache.") var noKernelCache = false
    @Flag(help: "Node A starts populated, node B fresh and joining: B walks every location, then completes its join.")
    var joining = false
    @Flag(help: "Node A leaves (graceful stop) when healing begins; A must end without MOS and B without MOOS.")
    var leave = false
    @Flag(help: "Promotion: the link is cut for good, A is promoted, B later demoted (wiped, rejoins adopting A's copy).")
    var promote = false
    @Option(help: "Switch off one protocol rule (mutation testing): \(Rule.allCases.map(\.rawValue).joined(separator: ", ")).")
    var ruleOff: [Rule] = []
    @Option(help: "Override the prediction window (0: no prediction).") var window: Int?
    @Option(help: "Stop a sweep after this many failing seeds.") var maxFailures = 10
    @Flag(help: "With --rule-off: find the first seed that fails with the rule off but passes with safe rules.")
    var firstCaught = false
    @Flag(help: "Run sweep seeds in this process instead of one forked child per seed (faster; a core trap ends the sweep).")
    var noIsolation = false
    @Option(help: "Run a scripted scenario from this file (language: Sources/TwinSim/Scenario.swift).") var script: String?

    func options() -> SimOptions {
        var o = SimOptions()
        o.faults = !noFaults
        o.harshDisks = harshDisks
        o.checkInvariantsEachStep = !noInvariants
        o.kernelCache = !noKernelCache
        o.joining = joining
        o.leave = leave
        o.promote = promote
        for r in ruleOff { r.switchOff(&o.rules) }
        if let window { o.adjustCore = { $0.predictionWindow = window } }
        return o
    }

    func run() throws {
        // `--report`, or a workload without seeds to run: print the figures.
        if report || (workload != nil && seed == nil && seeds == nil && script == nil) { return reportMode() }
        if let script {
            guard let f = fopen(script, "r") else { throw ValidationError("cannot open \(script)") }
            defer { fclose(f) }
            var text = ""
            var buf = [CChar](repeating: 0, count: 4096)
            while fgets(&buf, Int32(buf.count), f) != nil {
                text += String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            var rules = ProtocolRules.safe
            for r in ruleOff { r.switchOff(&rules) }
            let outcome = Scenario(script, text).run(rules: rules)
            for line in outcome.trace { print(line) }
            if !outcome.report.isEmpty { print(outcome.report) }
            print(outcome.passed ? "scenario \(script): ok" : "scenario \(script): FAILED")
            if !outcome.passed { throw ExitCode(1) }
            return
        }
        if let seed {
            var o = options()
            o.streamTrace = trace
            announce(seed)
            let r = Simulation.run(seed: seed, workload: workload, options: o)
            print("config \(r.config)")
            print("core \(r.core.description)")
            print(r.metrics.summary + " events=\(r.metrics.events) simulated=\(r.finalTimeUs)us"
                  + (promote ? " promotions=\(r.metrics.promotions) conflicts=\(r.metrics.conflicts)" : ""))
            for v in r.violations { print("VIOLATION \(v)") }
            print(r.passed ? "seed \(seed): ok" : "seed \(seed): \(r.violations.count) violation(s)")
            if !r.passed { throw ExitCode(1) }
            return
        }
        guard let range = seeds?.range else {
            throw ValidationError("give --seed N or --seeds A..B")
        }
        if firstCaught { return try firstCaughtMode(range) }
        var failing: [(UInt64, String)] = []
        var operations = 0, events = 0, crashes = 0, disconnects = 0, runs = 0, conflicts = 0
        let o = options()
        let start = monotonicSeconds()
        for s in range {
            let r = isolatedRun(s, options: o)
            runs += 1
            operations += r.operations; events += r.events; crashes += r.crashes; disconnects += r.disconnects
            conflicts += r.conflicts
            if let v = r.failure {
                failing.append((s, v))
                print("seed \(s) FAILED: \(v)")
                if failing.count >= maxFailures { break }
            }
        }
        let seconds = monotonicSeconds() - start
        let rate = Double(runs) / max(seconds, 1e-9)
        print("seeds=\(runs) operations=\(operations) events=\(events) crashes=\(crashes) disconnects=\(disconnects)"
              + (promote ? " conflicts=\(conflicts)" : "")
              + " violations=\(failing.count) seconds=\(Int(seconds)) seeds/s=\(Int(rate))")
        if !failing.isEmpty {
            print("failing seeds: \(failing.map { String($0.0) }.joined(separator: " "))")
            throw ExitCode(1)
        }
    }

    /// Mutation check: the first seed where the rules given by --rule-off break a run that passes with safe rules.
    func firstCaughtMode(_ range: ClosedRange<UInt64>) throws {
        guard !ruleOff.isEmpty else { throw ValidationError("--first-caught needs --rule-off") }
        var safeOptions = options()
        safeOptions.rules = .safe
        let broken = options()
        var runs = 0, traps = 0, bothFail = 0
        for s in range {
            runs += 1
            let b = isolatedRun(s, options: broken)
            guard let failure = b.failure else { continue }
            if failure.hasPrefix("[core-trap]") { traps += 1; continue }
            if isolatedRun(s, options: safeOptions).failure != nil { bothFail += 1; continue }
            print("caught \(ruleOff.map(\.rawValue).joined(separator: "+")) at seed \(s) after \(runs) seed(s) (\(traps) core trap(s), \(bothFail) seed(s) failing with safe rules too): \(failure)")
            return
        }
        print("not caught: \(ruleOff.map(\.rawValue).joined(separator: "+")) in \(runs) seed(s) (\(traps) core trap(s), \(bothFail) seed(s) failing with safe rules too)")
        throw ExitCode(1)
    }

    struct SeedOutcome {
        var failure: String?
        var operations = 0, events = 0, crashes = 0, disconnects = 0
        /// Promotion runs: registers whose completed writes the promotion gave up.
        var conflicts = 0
    }

    /// Runs one seed in a forked child when isolation is on, so that a trap in the core (an assertion) is reported
    /// with its seed and the sweep goes on.
    func isolatedRun(_ seed: UInt64, options o: SimOptions) -> SeedOutcome {
        func direct() -> SeedOutcome {
            announce(seed)
            let r = Simulation.run(seed: seed, workload: workload, options: o)
            return SeedOutcome(failure: r.violations.first.map { "\($0)" }, operations: r.metrics.operations,
                               events: r.metrics.events, crashes: r.metrics.crashes, disconnects: r.metrics.disconnects,
                               conflicts: r.metrics.conflicts)
        }
        guard !noIsolation else { return direct() }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return direct() }
        fflush(nil)  // nothing buffered may be written twice by parent and child
        let pid = fork()
        if pid == 0 {
            close(fds[0])
            let r = direct()
            let line = Array("\(r.operations) \(r.events) \(r.crashes) \(r.disconnects) \(r.conflicts) \(r.failure ?? "")".utf8)
            var offset = 0
            while offset < line.count {
                let n = line[offset...].withUnsafeBufferPointer { write(fds[1], $0.baseAddress, $0.count) }
                if n <= 0 { break }
                offset += n
            }
            _exit(0)
        }
        close(fds[1])
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBufferPointer { read(fds[0], $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        close(fds[0])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let signal = status & 0x7f
        if signal != 0 {
            return SeedOutcome(failure: "[core-trap] the run stopped on signal \(signal) (an assertion in the core?); replay with --seed \(seed) --trace")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let parts = text.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6 else { return SeedOutcome(failure: "[sim-error] child gave no result") }
        return SeedOutcome(failure: parts[5].isEmpty ? nil : parts[5], operations: Int(parts[0]) ?? 0,
                           events: Int(parts[1]) ?? 0, crashes: Int(parts[2]) ?? 0, disconnects: Int(parts[3]) ?? 0,
                           conflicts: Int(parts[4]) ?? 0)
    }

    func reportMode() {
        let range = seeds?.range ?? 0...99
        let kinds = workload.map { [$0] } ?? [.sequential, .random, .createHeavy, .contending]
        print("workload report over seeds \(range.lowerBound)..\(range.upperBound)\(noFaults ? " (no faults)" : "")\(window.map { ", window \($0)" } ?? "")")
        var o = options()
        o.uniformDisks = true
        for kind in kinds {
            var total = SimMetrics()
            var bad = 0
            for s in range {
                announce(s)
                let r = Simulation.run(seed: s, workload: kind, options: o)
                total.merge(r.metrics)
                if !r.passed { bad += 1 }
            }
            let name = kind.rawValue + String(repeating: " ", count: max(0, 13 - kind.rawValue.count))
            print("\(name) \(total.summary) failing-seeds=\(bad)")
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

ensureDeterministicHashing()
installTrapHandler()
TwinfsSim.main()
