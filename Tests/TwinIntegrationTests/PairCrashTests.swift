// A daemon of a pair killed with SIGKILL at a random moment of a mixed workload on both nodes, restarted: no
// write whose call had returned is lost, both nodes read the same, and the out-of-sync bitmaps drain.
// Iterations: TWINFS_CRASH_ITERATIONS (default 3 in CI; raise it for a soak run). Seeded: TWINFS_CRASH_SEED.
import Foundation
import XCTest

final class PairCrashTests: PairTestCase {
    /// The workload: per node two writers replacing their own files (content stamped with a version, up to several
    /// tracks) through create, write, sometimes fsync, rename; after each returned rename a ledger line.
    static let workload = #"""
        import os, random, sys, threading, time
        node, mnt, ledger_path, seconds, seed = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        ledger = open(ledger_path, "a", buffering=1)
        stop = time.monotonic() + seconds
        lock = threading.Lock()
        def writer(w):
            rnd = random.Random(seed * 100 + w)
            version = int(time.time() * 1000) * 1000
            while time.monotonic() < stop:
                version += 1
                # Inside a directory of the mount: once the mount is gone (its daemon killed) the path does not
                # exist, so nothing lands in the bare mountpoint directory underneath.
                name = "work-%s/w%d-f%d" % (node, w, rnd.randrange(6))
                body = ("%s %d\n" % (name, version)).encode() * rnd.choice([1, 2000, 15000])
                # Replaced whole (write a temporary name, rename over): a returned rename means the new
                # content, a killed one the old; any other content is a loss or a tear.
                tmp = os.path.join(mnt, name + ".tmp")
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.write(fd, body)
                    if rnd.random() < 0.2: os.fsync(fd)
                    os.close(fd)
                    os.rename(tmp, os.path.join(mnt, name))
                except OSError:
                    time.sleep(0.05); continue
                with lock: ledger.write("%s %d %d\n" % (name, version, len(body)))
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        """#

    /// The check: every file's content is whole, at least as new as its last ledgered write, and the same on both nodes.
    static let check = #"""
        import os, sys
        a, b, ledgers = sys.argv[1], sys.argv[2], sys.argv[3:]
        last = {}
        for path in ledgers:
            for line in open(path):
                name, version, size = line.split()
                last[name] = max(last.get(name, 0), int(version))
        bad = []
        for name, version in sorted(last.items()):
            contents = []
            for root in (a, b):
                with open(os.path.join(root, name), "rb") as f: contents.append(f.read())
            if contents[0] != contents[1]:
                bad.append("%s differs between the nodes (%d vs %d bytes)" % (name, len(contents[0]), len(contents[1])))
                continue
            lines = contents[0].decode().splitlines()
            if not lines or len(set(lines)) != 1:
                bad.append("%s is torn: %d distinct lines" % (name, len(set(lines))))
                continue
            got = int(lines[0].split()[1])
            if got < version:
                bad.append("%s lost a returned write: has version %d, the ledger says %d had returned" % (name, got, version))
        print("files %d problems %d" % (len(last), len(bad)))
        for x in bad[:20]: print(x)
        sys.exit(1 if bad else 0)
        """#

    func testKillingEitherDaemonLosesNoReturnedWriteAndThePairConverges() throws {
        let iterations = Int(ProcessInfo.processInfo.environment["TWINFS_CRASH_ITERATIONS"] ?? "") ?? 3
        let seed = UInt64(ProcessInfo.processInfo.environment["TWINFS_CRASH_SEED"] ?? "") ?? UInt64(Date().timeIntervalSince1970)
        print("PairCrashTests seed \(seed) (TWINFS_CRASH_SEED=\(seed) replays the choice of victims and moments)")
        var rng = SplitMix64(seed: seed)
        let options = ["allow_other", "peer_timeout=3"]
        var p = try startPair(options: options)
        let ledgerA = path("ledger-a"), ledgerB = path("ledger-b")
        shell("mkdir \(quote(p.a.mountpoint))/work-a \(quote(p.b.mountpoint))/work-b")
        for iteration in 0..<iterations {
            let seconds = 1.0 + Double(rng.next() % 1500) / 1000
            let killAfter = 0.2 + Double(rng.next() % 1000) / 1000 * seconds
            let victimIsA = rng.next() % 2 == 0
            let workloads = DispatchGroup()
            for (node, mnt, ledger) in [("a", p.a.mountpoint, ledgerA), ("b", p.b.mountpoint, ledgerB)] {
                let argv = ["/usr/bin/python3", "-c", Self.workload, node, mnt, ledger, "\(seconds)", "\(seed &+ UInt64(iteration))"]
                DispatchQueue.global().async(group: workloads) { Commands.run(argv, timeoutSeconds: 120) }
            }
            usleep(UInt32(killAfter * 1_000_000))
            let victim = victimIsA ? p.a : p.b
            victim.killHard()
            _ = workloads.wait(timeout: .now() + 150)
            let restarted = try mount(victim.store, at: victimIsA ? "mnt-a" : "mnt-b", options: options)
            if victimIsA { p.a = restarted } else { p.b = restarted }
            try waitConnected(p.a)
            try waitConnected(p.b)
            let r = Commands.python(Self.check, args: [p.a.mountpoint, p.b.mountpoint, ledgerA, ledgerB].filter {
                !$0.hasPrefix(scratch + "/ledger") || FileManager.default.fileExists(atPath: $0)
            })
            XCTAssertSucceeds(r, "iteration \(iteration) (killed \(victimIsA ? "A" : "B") after \(killAfter) s), seed \(seed)\n\(p.a.daemonLog())\n\(p.b.daemonLog())")
            try waitDrained(p)
            if !r.ok { break }
        }
    }

    /// fsync=mirror writers on A: each writer rewrites fixed-size records in place and ledgers a version only after
    /// fsync returned.
    static let fsyncWorkload = #"""
        import os, random, sys, threading, time
        mnt, ledger_path, seconds, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        ledger = open(ledger_path, "a", buffering=1)
        stop = time.monotonic() + seconds
        lock = threading.Lock()
        def writer(w):
            rnd = random.Random(seed * 100 + w)
            version = int(time.time() * 1000) * 1000
            while time.monotonic() < stop:
                version += 1
                name = "synced/w%d-f%d" % (w, rnd.randrange(4))
                record = ("%s %d\n" % (name, version)).encode().ljust(4096, b".")
                try:
                    fd = os.open(os.path.join(mnt, name), os.O_WRONLY)
                    os.pwrite(fd, record * 3, 0)
                    os.fsync(fd)
                    os.close(fd)
                except OSError:
                    # The daemon is gone: nothing more can return.
                    if not os.path.isdir(os.path.join(mnt, "synced")): return
                    time.sleep(0.05); continue
                with lock: ledger.write("%s %d\n" % (name, version))
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        """#

    /// Every ledgered (fsync-returned) version is in the file, or a newer one.
    static let fsyncCheck = #"""
        import os, sys
        root, ledger = sys.argv[1], sys.argv[2]
        last = {}
        for line in open(ledger):
            name, version = line.split()
            last[name] = max(last.get(name, 0), int(version))
        bad = []
        for name, version in sorted(last.items()):
            data = open(os.path.join(root, name), "rb").read()
            got = int(data.split(b"\n")[0].split()[1])
            if got < version: bad.append("%s lost an fsync'ed write: has %d, fsync of %d had returned" % (name, got, version))
        print("files %d problems %d" % (len(last), len(bad)))
        for x in bad[:20]: print(x)
        sys.exit(1 if bad else 0)
        """#

    func testFsyncedWritesSurviveTheCrashedNodesStoreBeingDestroyed() throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["TWINFS_CRASH_SEED"] ?? "") ?? UInt64(Date().timeIntervalSince1970)
        print("PairCrashTests seed \(seed)")
        var rng = SplitMix64(seed: seed)
        let options = ["allow_other", "peer_timeout=3"]
        // A slow link (30 ms each way): the background copy trails the writers, so only fsync=mirror puts the
        // last writes on B before the kill (with fsync=local this test fails).
        var p = try startPair(delayMs: 30, options: options + (ProcessInfo.processInfo.environment["TWINFS_CRASH_FSYNC_LOCAL"] == nil ? [] : ["fsync=local"]))
        let ledger = path("ledger-synced")
        shell(
            """
            set -e
            mkdir \(quote(p.a.mountpoint))/synced
            for w in 0 1; do for f in 0 1 2 3; do head -c 12288 /dev/zero > \(quote(p.a.mountpoint))/synced/w$w-f$f; done; done
            sync \(quote(p.a.mountpoint))/synced/*
            """)
        let seconds = 30.0
        let killAfter = Double(rng.next() % 1000) / 1000
        let workload = DispatchGroup()
        let argv = ["/usr/bin/python3", "-c", Self.fsyncWorkload, p.a.mountpoint, ledger, "\(seconds)", "\(seed)"]
        DispatchQueue.global().async(group: workload) { Commands.run(argv, timeoutSeconds: 120) }
        // Killed a random moment after some fsyncs have returned (the writers wait a round trip per fsync).
        try waitUntil("fsyncs returning on A", timeoutSeconds: 20) {
            ((try? String(contentsOfFile: ledger, encoding: .utf8))?.split(separator: "\n").count ?? 0) >= 4
        }
        usleep(UInt32(killAfter * 1_000_000))
        p.a.killHard()
        _ = workload.wait(timeout: .now() + 150)
        // A's disk is gone for good.
        try FileManager.default.removeItem(atPath: p.storeA)
        let synced = (try? String(contentsOfFile: ledger, encoding: .utf8))?.split(separator: "\n").count ?? 0
        XCTAssertGreaterThan(synced, 0, "some fsyncs returned before the kill")

        // The operator promotes B, which then has every write whose fsync had returned on A.
        XCTAssertSucceeds(Commands.twinfs(["promote", p.b.mountpoint]))
        XCTAssertSucceeds(Commands.python(Self.fsyncCheck, args: [p.b.mountpoint, ledger]), "seed \(seed)\n\(p.b.daemonLog())")

        // A comes back as a brand-new store: it gives way to the promoted B (nothing to keep) and joins.
        XCTAssertSucceeds(Commands.twinfs([
            "init", p.storeA, "--node", "alpha", "--node-id", "1", "--listen", "127.0.0.1:\(portA)", "--peer", "127.0.0.1:\(portB)",
            "--secret-file", path("pair-secret"),
        ]))
        p.a = try mount(p.storeA, at: "mnt-a", options: options)
        try waitConnected(p.a)
        try waitConnected(p.b)
        XCTAssertSucceeds(Commands.python(Self.fsyncCheck, args: [p.a.mountpoint, ledger]), "seed \(seed)\n\(p.a.daemonLog())")
        try waitDrained(p)
        shell("diff -r \(quote(p.a.mountpoint)) \(quote(p.b.mountpoint))")
        XCTAssertFalse(FileManager.default.fileExists(atPath: p.a.mountpoint + "/.twinfs/conflicts"),
                       "a brand-new store has nothing of its own to keep")
    }
}
