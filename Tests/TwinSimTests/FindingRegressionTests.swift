// TwinSimTests/FindingRegressionTests.swift: replays the seeds of core bugs the simulator found (Docs/TESTING.md,
// "Findings") that were fixed, through the `twinfs-sim` executable, so each fix stays fixed.
// Owns: one replay per fixed finding and the judgement of its exit status.
// Must never: hide which seed failed: the message carries the tool's output.

import Testing

@Suite struct FixedFindingsStayFixed {
    /// Findings 11 and 12: a store write of the peer's older data that completed after a newer local write had
    /// finished cleared the OOS bit of that local write; the peer then kept (11) or was granted over (12) old data.
    @Test(arguments: [(5715 as UInt64, "11"), (12214, "12")])
    func aReceivedOlderCopyDoesNotClearTheNewerLocalWritesBit(seed: UInt64, finding: String) throws {
        let run = try ToolProcess(["--seed", "\(seed)"]).wait()
        #expect(run.status == 0, "finding \(finding) (seed \(seed)) is back:\n\(run.lastLines)")
        #expect(run.output.contains("seed \(seed): ok"), "finding \(finding):\n\(run.lastLines)")
    }
}
