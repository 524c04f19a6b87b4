// TwinSimTests/ScenarioTests.swift: one scripted scenario per hazard of DESIGN.md section 3, run through the simulator.
// Owns: the scenario texts and, for each hazard with a rule switch, the proof that the scenario fails without the rule.
// Must never: assert on trace details: a scenario states client-visible values and bitmap bits, and every run ends
// with the simulator's healing phase and final checks.

import MirrorCore
import Testing
import TwinSim

/// Runs `scenario` with safe rules and expects it to pass; if `rule` is given, runs it again with that rule switched
/// off and expects the simulator to report something.
func check(_ scenario: Scenario, failsWithout rule: WritableKeyPath<ProtocolRules, Bool>? = nil) {
    let safe = scenario.run()
    #expect(safe.passed, "\(scenario.name) failed with safe rules:\n\(safe.report)\n--- trace (tail) ---\n\(safe.trace.suffix(60).joined(separator: "\n"))")
    guard let rule else { return }
    var rules = ProtocolRules.safe
    rules[keyPath: rule] = false
    let broken = scenario.run(rules: rules)
    #expect(!broken.passed, "\(scenario.name) still passes with \(rule) switched off: the scenario does not exercise it")
}

@Suite struct HazardScenarios {
    /// DESIGN.md hazard 1.
    @Test func exclusiveWritePermission() {
        check(Scenario("exclusiveWritePermission", """
            # Hazard 1: two nodes mark the same track at the same moment; the lower node id wins, the other retries.
            A write ino2/t0 as a1
            B write ino2/t0 as b1
            run
            expect a1 done
            expect b1 done
            A read ino2/t0 as ra
            B read ino2/t0 as rb
            run
            expect ra = b1
            expect rb = b1
            """), failsWithout: \.tieBreakConcurrentMarks)
    }

    /// DESIGN.md hazard 2.
    @Test func answeringAPullGivesTheTokenAway() {
        check(Scenario("answeringAPullGivesTheTokenAway", """
            # Hazard 2: answering a pull gives the token away; the next local write must mark again.
            A write ino2/t0 as w1
            run
            B read ino2/t0 as r1
            run
            expect r1 = w1
            expect A !mos ino2/t0
            hold A
            A write ino2/t0 as w2
            run 5ms
            expect w2 pending              # its mark is held: A may not write without the token
            B read ino2/t0 as r2           # concurrent with w2: w1 is a legal answer
            run 5ms
            release A
            run
            B read ino2/t0 as r3
            run
            expect r3 = w2
            """), failsWithout: \.giveUpTokenOnPull)
    }

    /// DESIGN.md hazard 2.
    @Test func aLateAckDoesNotClearANewerOOS() {
        check(Scenario("aLateAckDoesNotClearANewerOOS", """
            # Hazard 2: a late acknowledgement of an older version must not clear OOS for a newer write.
            set pushDelay=20000
            A write ino2/t0 as w1
            run 30ms
            hold B                         # B's acknowledgements wait from now on
            A write ino2/t0 as w2          # A holds the token: local write, pushed about 20 ms later
            run 25ms                       # B has stored w2; its ack is held
            A write ino2/t0 as w3          # newer local write, not pushed for 20 ms
            run 1ms
            release B                      # the ack for w2 arrives now, after w3
            run 2ms
            expect A oos ino2/t0
            B read ino2/t0 as r            # B must get w3 from A
            run
            expect r = w3
            """), failsWithout: \.ignoreStaleAcks)
    }

    /// DESIGN.md hazard 3.
    @Test func afterACrashNoBlindInSyncAnswers() {
        check(Scenario("afterACrashNoBlindInSyncAnswers", """
            # Hazard 3: after a crash a node must not answer "in sync" for what it may not have sent.
            A write ino2/t0 as w0
            run
            hold A
            A write ino2/t0 as w1          # A holds the token: local write; its push is held
            run 5ms
            expect w1 done
            crash A kill                   # the push dies with the connection; A's memory of OOS is gone, the data are not
            restart A
            release A
            run
            B read ino2/t0 as r1
            run
            expect r1 = w1
            """), failsWithout: \.answerInSyncOnlyIfKnown)
    }

    /// DESIGN.md hazard 4.
    @Test func aDelayedPushDoesNotUndoANewerWrite() {
        check(Scenario("aDelayedPushDoesNotUndoANewerWrite", """
            # Hazard 4: a background push of an old version must not overwrite a newer write that came another way.
            set pushDelay=20000
            A write ino2/t0 as w1          # A marks, writes; its push waits 20 ms
            run 5ms
            B write ino2/t0 as w2          # full overwrite: B takes the token without A's data and writes a newer version
            run 10ms
            expect w2 done
            run 30ms                       # A's push of w1 arrives at B now
            B read ino2/t0 as r
            A read ino2/t0 as ra
            run
            expect r = w2
            expect ra = w2
            """))
    }

    /// DESIGN.md hazard 4: the version check on everything received (here a pull answer older than the local copy).
    @Test func olderDataNeverOverwritesNewer() {
        check(Scenario("olderDataNeverOverwritesNewer", """
            # Hazard 4: data older than what a node holds must never overwrite it, whatever path it comes by.
            set pushDelay=1000000 apply=3000
            A write ino2/t0 ino2 as w1      # A holds both tokens; w1 is not pushed for a long time
            run
            A write ino2 as x               # A's operation holds ino2 for 3 ms
            run 100us
            B write ino2/t0 ino2 as w2      # B marks both: A grants t0 at once, ino2 only after x
            run 1500us
            A read ino2/t0 as r             # A pulls t0; B, still waiting for ino2, answers with its older copy
            run
            expect w2 done
            B read ino2/t0 as rb
            A read ino2/t0 as ra
            run
            expect rb = w2
            expect ra = w2
            """), failsWithout: \.ignoreStalePushes)
    }

    /// DESIGN.md hazard 5.
    @Test func multiLocationOperationsDoNotDeadlock() {
        check(Scenario("multiLocationOperationsDoNotDeadlock", """
            # Hazard 5: multi-location operations on both nodes over the same locations, in opposite textual orders.
            A write ino2/t1 ino2/t0 ino2 as a1
            B write ino2 ino2/t0 ino2/t1 as b1
            A write ino1:0 ino3 as createA           # create: a directory entry plus a new inode
            B write ino1:1 ino5 as createB
            run
            expect a1 done
            expect b1 done
            expect createA done
            expect createB done
            A write ino2/t0 ino2/t1 ino2 as a2
            B write ino2/t1 ino2/t0 ino2 as b2
            A write ino1:0 ino1:1 ino3 as renameA    # rename within the directory
            run
            expect a2 done
            expect b2 done
            expect renameA done
            A read ino1 as dirA
            B read ino1 as dirB
            run
            expect dirA = renameA renameA
            expect dirB = renameA renameA
            """))
    }

    /// DESIGN.md hazard 6.
    @Test func fullOverwriteNeedsNoDataPartialWriteDoes() {
        check(Scenario("fullOverwriteNeedsNoDataPartialWriteDoes", """
            # Hazard 6: a full-track overwrite needs the token, not the old data; a partial write needs the data first.
            set pushDelay=1000000
            B write ino2/t0 as b0
            B write ino2/t1 as b1
            run
            A write ino2/t0 as a0          # full: mark without data, no pull
            run
            expect a0 done
            expect pulls = 0
            A write ino2/t1:0 as a1        # partial: B's unsynced slot 1 must come along
            run
            expect a1 done
            A read ino2/t0 ino2/t1 as r
            run
            expect r = a0 a0 a1 b1
            """))
    }

    /// DESIGN.md hazard 7.
    @Test func moosIsDurableBeforeTheMarkIsAcknowledged() {
        check(Scenario("moosIsDurableBeforeTheMarkIsAcknowledged", """
            # Hazard 7: MOOS is durable before a mark is acknowledged (here: a power loss right after the ack).
            set disk=3000
            B write ino2/t0 as w1
            run 2500us
            crash A power
            restart A
            run
            expect w1 done
            A read ino2/t0 as r1
            run
            expect r1 = w1
            """), failsWithout: \.persistMOOSBeforeAck)
    }

    /// DESIGN.md hazard 7.
    @Test func supersetIsDurableBeforeAWriteUnderANewToken() {
        check(Scenario("supersetIsDurableBeforeAWriteUnderANewToken", """
            # Hazard 7: the OOS superset ("held") is durable before a write under a new token is applied.
            set diskA=10000 diskB=0 apply=0 writeback=0
            A write ino2/t1 as w0          # the first write also reserves the Lamport clock
            run
            A write ino2/t0 as w1          # A marks and gets the token quickly; its own disk is slow
            run 4ms
            crash A power                  # A's data survive (written back); then so must its "held" bit
            restart A
            run
            B read ino2/t0 as r
            run
            # no expectation on r: if w1 completed before the crash, the checker demands w1; if not, either is fine
            """), failsWithout: \.persistSupersetBeforeWrite)
    }

    /// DESIGN.md hazard 8.
    @Test func kernelCachesAreInvalidatedBeforeTheAck() {
        check(Scenario("kernelCachesAreInvalidatedBeforeTheAck", """
            # Hazard 8: kernel caches are invalidated before a mark is acknowledged.
            A read ino2/t0 as r0
            run
            expect A cached ino2/t0
            B write ino2/t0 as w1
            run
            expect A !cached ino2/t0
            A read ino2/t0 as r1
            run
            expect r1 = w1
            """), failsWithout: \.invalidateBeforeAck)
    }

    /// DESIGN.md hazard 9.
    @Test func sequentialWritesMarkAhead() {
        check(Scenario("sequentialWritesMarkAhead", """
            # Hazard 9: a sequential writer marks ahead with a growing window.
            set window=2
            A write ino2/t0 as w0
            run
            expect A mos ino2/t1
            expect A mos ino2/t2
            A write ino2/t1 as w1
            A write ino2/t2 as w2
            run
            expect marks = 1
            A write ino2/t3 as w3
            run
            expect marks = 2
            """))
    }

    /// DESIGN.md hazard 9.
    @Test func pullAnswersCarryNearbyOutOfSyncTracks() {
        check(Scenario("pullAnswersCarryNearbyOutOfSyncTracks", """
            # Hazard 9: a pull answer carries nearby out-of-sync tracks (prefetch); cold in-sync tokens are released.
            set prefetch=4 pushDelay=1000000
            A write ino2/t0 ino2/t1 ino2/t2 as w
            run
            B read ino2/t0 as r0
            run
            B read ino2/t1 as r1
            B read ino2/t2 as r2
            run
            expect pulls = 1
            expect r1 = w
            expect r2 = w
            """))
    }

    /// DESIGN.md hazard 9.
    @Test func coldTokensAreReleased() {
        check(Scenario("coldTokensAreReleased", """
            # Hazard 9: cold in-sync tokens are released, so the peer's reads become local again.
            set release=5000
            A write ino2/t0 as w
            run 100ms
            expect A !mos ino2/t0
            expect B !moos ino2/t0
            B read ino2/t0 as r
            run
            expect pulls = 0
            expect r = w
            """))
    }

    /// DESIGN.md hazard 2.
    @Test func readAfterWriteAcrossNodes() {
        check(Scenario("readAfterWriteAcrossNodes", """
            # Hazard 2: the answer to a pull hands the token back.
            A write ino2/t0 as w1
            run
            expect A mos ino2/t0
            expect B moos ino2/t0
            B read ino2/t0 as r1
            run
            expect r1 = w1
            expect A !mos ino2/t0
            A write ino2/t0 as w2
            run
            B read ino2/t0 as r2
            run
            expect r2 = w2
            """))
    }

}
