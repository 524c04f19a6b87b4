// TwinSimTests/SweepTests.swift: the random-seed sweep, replay determinism, and the proof that each protocol rule
// matters, all through the `twinfs-sim` executable.
// Owns: running twinfs-sim as a child process (so that a trap in the core fails one test with its seed instead of
// killing the whole test process) and judging its exit status and output.
// Must never: hide a failing seed: every failure message carries the tool's output, which names the seed.

import Foundation
import MirrorCore
import Testing

/// The twinfs-sim binary built next to this test bundle.
func simulatorBinary() -> URL? {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("twinfs-sim")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}

struct ToolRun {
    let status: Int32
    let output: String
    var lastLines: String { output.split(separator: "\n").suffix(12).joined(separator: "\n") }
}

/// Starts twinfs-sim with `arguments`; `wait()` collects its status and output.
final class ToolProcess: @unchecked Sendable {
    let process = Process()
    let pipe = Pipe()
    var data = Data()
    let reader = DispatchGroup()

    init(_ arguments: [String]) throws {
        guard let binary = simulatorBinary() else { throw ToolError.missing }
        process.executableURL = binary
        process.arguments = arguments
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        reader.enter()
        DispatchQueue.global().async {
            self.data = self.pipe.fileHandleForReading.readDataToEndOfFile()
            self.reader.leave()
        }
    }

    func wait() -> ToolRun {
        reader.wait()
        process.waitUntilExit()
        return ToolRun(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }
}

enum ToolError: Error { case missing }

/// Sweeps seeds 0..<`seeds` with `flags` (stopping after 5 failures) and expects every seed to run and pass.
func expectSweepPasses(_ flags: [String], seeds: Int) throws {
    let run = try ToolProcess(["--seeds", "0..\(seeds - 1)", "--max-failures", "5"] + flags).wait()
    #expect(run.status == 0, "sweep \(flags) found violations:\n\(run.lastLines)")
    #expect(run.output.contains("seeds=\(seeds) "), "the sweep did not run all its seeds:\n\(run.lastLines)")
}

@Suite(.serialized) struct SimulatorSweeps {
    /// The CI sweep: 2,000 swarm seeds (faults, crashes, all workloads) must all pass. Two halves run at once.
    @Test func twoThousandRandomSeedsPass() throws {
        let halves = try [ToolProcess(["--seeds", "0..999", "--max-failures", "20"]),
                          ToolProcess(["--seeds", "1000..1999", "--max-failures", "20"])]
        for run in halves.map({ $0.wait() }) {
            #expect(run.status == 0, "sweep found violations:\n\(run.lastLines)")
            #expect(run.output.contains("seeds=1000 "), "a half did not run all its seeds:\n\(run.lastLines)")
        }
    }

    /// A seed replays exactly, in a fresh process each time (hashing seeds differ per process).
    @Test(arguments: [7 as UInt64, 12345])
    func aSeedReplaysExactly(seed: UInt64) throws {
        // Only the simulator's own lines: a trap's backtrace carries addresses that differ from run to run.
        func simLines(_ run: ToolRun) -> [Substring] {
            run.output.split(separator: "\n").filter { line in
                line.first?.isNumber == true || ["config ", "core ", "ops=", "VIOLATION", "seed "].contains { line.hasPrefix($0) }
            }
        }
        let first = try ToolProcess(["--seed", "\(seed)", "--trace"]).wait()
        let second = try ToolProcess(["--seed", "\(seed)", "--trace"]).wait()
        #expect(simLines(first).count > 20, "the trace is suspiciously short:\n\(first.lastLines)")
        #expect(simLines(first) == simLines(second), "two replays of seed \(seed) differ")
        #expect(first.status == second.status)
    }

    @Test func aSweepFailsAndNamesTheSeedWhenARuleIsOff() throws {
        let run = try ToolProcess(["--seeds", "0..199", "--rule-off", "invalidateBeforeAck", "--max-failures", "1"]).wait()
        #expect(run.status == 1)
        #expect(run.output.contains("failing seeds: "), "\(run.lastLines)")
    }
}

/// Switching off one safety rule must let the simulator find a seed that breaks, which passes with the rule on.
/// Serialized: each case is a child process, and the machine has two cores.
@Suite(.serialized) struct RuleSwitchesAreCaught {
    static let rules = ["giveUpTokenOnPull", "ignoreStaleAcks", "persistMOOSBeforeAck", "persistSupersetBeforeWrite",
                        "invalidateBeforeAck", "ignoreStalePushes", "answerInSyncOnlyIfKnown", "tieBreakConcurrentMarks"]
    static let seedBound = 300

    @Test(arguments: rules)
    func switchedOffRuleIsCaughtWithinTheSeedBound(rule: String) throws {
        let run = try ToolProcess(["--seeds", "0..\(Self.seedBound - 1)", "--rule-off", rule, "--first-caught"]).wait()
        #expect(run.status == 0, "\(rule) switched off was not caught in \(Self.seedBound) seeds:\n\(run.lastLines)")
        #expect(run.output.contains("caught \(rule) at seed"), "\(run.lastLines)")
    }
}
