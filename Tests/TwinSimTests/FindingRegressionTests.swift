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

    /// Finding 10: after a power loss undid a node's own writes that the peer held, the node's restored superset bit
    /// was cleared by an ack (or its forced pull was lost with the connection) before the peer's copy came back; both
    /// nodes then answered each other "in sync" and the older copy stayed (divergence, lost or stale reads).
    @Test(arguments: [(947 as UInt64, true), (17387, true), (17387, false), (6305, false), (6566, false)])
    func aNodeWhoseStoreWentBackwardsIsBroughtForward(seed: UInt64, harshDisks: Bool) throws {
        let run = try ToolProcess(["--seed", "\(seed)"] + (harshDisks ? ["--harsh-disks"] : [])).wait()
        #expect(run.status == 0, "finding 10 (seed \(seed), harsh disks: \(harshDisks)) is back:\n\(run.lastLines)")
        #expect(run.output.contains("seed \(seed): ok"), "finding 10:\n\(run.lastLines)")
    }
}
