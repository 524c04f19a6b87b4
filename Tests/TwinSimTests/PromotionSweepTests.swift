// TwinSimTests/PromotionSweepTests.swift: promotion and demotion (PROTOCOL.md section 13) under the swarm's faults,
// through the `twinfs-sim` executable.
// Owns: the `--promote` sweeps (the link cut for good, A promoted, B demoted and rejoining while adopting A's copy) and
// a trace check that a run really goes through promotion, demotion and the end of the adoption.
// Must never: hide a failing seed: failure messages carry the tool's output, which names the seed.

import Foundation
import Testing

@Suite(.serialized) struct PromotionSweeps {
    /// Every checker applies after the demotion (history, durability, convergence, I2 and I6); B's writes that A lacked
    /// are the expected losses, and none of them may be a final value on either node.
    @Test(arguments: [["--promote"], ["--promote", "--harsh-disks"]])
    func sweepsPass(flags: [String]) throws {
        try expectSweepPasses(flags, seeds: 200)
    }

    @Test func aPromotionRunPromotesDemotesAndAdopts() throws {
        let run = try ToolProcess(["--seed", "5", "--promote", "--no-faults", "--trace"]).wait()
        #expect(run.status == 0, "\(run.lastLines)")
        #expect(run.output.contains("A is promoted"), "\(run.lastLines)")
        #expect(run.output.contains("B is demoted"), "\(run.lastLines)")
        #expect(run.output.contains("is given up (a conflict copy)"), "B's writes during the cut are lost:\n\(run.lastLines)")
        #expect(run.output.contains("B completes its join"), "the adoption ends with the join:\n\(run.lastLines)")
    }
}
