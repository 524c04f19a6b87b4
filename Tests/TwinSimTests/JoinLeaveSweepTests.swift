// TwinSimTests/JoinLeaveSweepTests.swift: joining and leaving (PROTOCOL.md "Joining", "Leaving") under the swarm's
// faults, through the `twinfs-sim` executable.
// Owns: the sweeps with `--joining` (node A populated, node B fresh: B walks everything while clients work, crashes
// included, then completes its join) and `--leave` (node A leaves when healing begins), and a trace check that a
// joining run really completes its join.
// Must never: hide a failing seed: failure messages carry the tool's output, which names the seed.

import Foundation
import Testing

@Suite(.serialized) struct JoiningAndLeavingSweeps {
    /// Every checker applies (reads against history, durability, convergence, invariants I2 and I6 with the joining
    /// default), and the run only counts as healed once B has completed its join.
    @Test(arguments: [["--joining"], ["--leave"], ["--joining", "--leave"], ["--joining", "--harsh-disks"]])
    func sweepsPass(flags: [String]) throws {
        try expectSweepPasses(flags, seeds: 300)
    }

    /// B's walk reads every location (pulling A's data) and completes the join; A's populated values are what B reads.
    @Test func aJoiningRunCompletesItsJoin() throws {
        let run = try ToolProcess(["--seed", "3", "--joining", "--no-faults", "--trace"]).wait()
        #expect(run.status == 0, "\(run.lastLines)")
        #expect(run.output.contains("A's store is populated"), "\(run.lastLines)")
        #expect(run.output.contains("B completes its join"), "\(run.lastLines)")
        #expect(run.output.contains("pull("), "B pulled what it lacked:\n\(run.lastLines)")
    }
}
