// Two real daemons mirroring each other over real TCP: what one node does is seen on the other at once,
// in both directions, through the kernel; restarts converge; strangers are refused.
import Foundation
import XCTest

final class PairTests: PairTestCase {
    func testWhatOneNodeDoesIsSeenOnTheOtherAtOnceAndTheReverse() throws {
        let p = try startPair()
        // Each step runs on one node and is checked on the other immediately (no waiting for the copy).
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            echo hello > $A/f && test "$(cat $B/f)" = hello
            echo world >> $B/f && test "$(cat $A/f)" = "$(printf 'hello\\nworld')"
            mkdir -p $A/d/e && test -d $B/d/e
            mv $B/f $A/d/e/g && test ! -e $A/f && test "$(head -1 $B/d/e/g)" = hello
            ln $A/d/e/g $A/d/h && test "$(stat -c %h $B/d/h)" = 2
            chmod 640 $B/d/h && test "$(stat -c %a $A/d/e/g)" = 640
            setfattr -n user.colour -v blue $A/d/h && test "$(getfattr --only-values -n user.colour $B/d/e/g)" = blue
            setfattr -x user.colour $B/d/h && ! getfattr -n user.colour $A/d/h 2>/dev/null
            ln -s e/g $B/d/link && test "$(readlink $A/d/link)" = e/g && test "$(head -1 $A/d/link)" = hello
            truncate -s 3 $A/d/h && test "$(cat $B/d/e/g)" = hel
            truncate -s 200000 $B/d/h && test "$(stat -c %s $A/d/h)" = 200000
            dd if=/dev/urandom of=$A/big bs=64K count=40 status=none && cmp $A/big $B/big
            dd if=/dev/urandom of=$B/big bs=1000 count=7 seek=333 conv=notrunc status=none && cmp $A/big $B/big
            rm $B/d/h && test "$(stat -c %h $A/d/e/g)" = 1
            rm -r $A/d && test ! -e $B/d
            touch -d '2001-02-03 04:05:06' $B/big && test "$(stat -c %Y $A/big)" = "$(date -d '2001-02-03 04:05:06' +%s)"
            mkfifo $A/fifo && test -p $B/fifo
            ls -la $A $B >/dev/null
            test "$(ls $A | sort)" = "$(ls $B | sort)"
            """)
        try waitDrained(p)
        for m in [p.a, p.b] {
            let state = try mirror(m)
            let errors = state["errors"] as? [String: Any] ?? [:]
            XCTAssertEqual(errors["unstampedWrites"] as? Int, 0, "every write was part of a granted plan on \(m.store)")
            XCTAssertEqual(errors["store"] as? Int, 0, "no store errors on \(m.store): \(state["lastError"] ?? "")")
        }
    }

    func testCopiedTreesAreIdenticalOnBothNodes() throws {
        let p = try startPair()
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            mkdir $S/src && cp -a /usr/share/doc/fuse3 /usr/share/doc/bash $S/src/ 2>/dev/null || cp -a /usr/share/doc/fuse3 $S/src/
            cp -a $S/src $A/tree
            diff -r $S/src $B/tree
            (cd $B && tar cf - tree) | (cd $S && mkdir back && cd back && tar xf -)
            diff -r $S/src $S/back/tree
            rm -rf $B/tree && test ! -e $A/tree
            """)
        try waitDrained(p)
    }

    /// The consistency checker: writers on both nodes stamp unique values into shared files; readers on both
    /// nodes check that no read returns a value older than the newest write that had returned before the read
    /// started. Reads and writes go through the kernel (page cache included).
    func testNoReadReturnsAValueOlderThanAWriteThatHadReturned() throws {
        let p = try startPair()
        let script = #"""
            import os, sys, threading, time
            a, b = sys.argv[1], sys.argv[2]
            files = ["shared0", "shared1", "shared2"]
            for f in files:
                with open(os.path.join(a, f), "wb") as h: h.write(b"0 0".ljust(64))
            lock = threading.Lock()
            done = {f: [] for f in files}          # (start, end, value) of every returned write
            violations, reads, stop = [], [0], time.monotonic() + 6
            def writer(node, root, wid):
                n = 0
                while time.monotonic() < stop:
                    n += 1
                    f = files[n % len(files)]
                    value = "%d %d" % (wid, n)
                    start = time.monotonic()
                    fd = os.open(os.path.join(root, f), os.O_WRONLY)
                    os.pwrite(fd, value.encode().ljust(64), 0)
                    os.close(fd)
                    end = time.monotonic()
                    with lock: done[f].append((start, end, value))
            def reader(root):
                while time.monotonic() < stop:
                    for f in files:
                        start = time.monotonic()
                        with lock: before = [w for w in done[f] if w[1] < start]
                        fd = os.open(os.path.join(root, f), os.O_RDONLY)
                        got = os.pread(fd, 64, 0).decode().strip()
                        os.close(fd)
                        reads[0] += 1
                        if not before: continue
                        latest = max(before, key=lambda w: w[1])
                        if got == latest[2]: continue
                        with lock: match = [w for w in done[f] if w[2] == got]
                        # A value is acceptable if its write was not finished before the latest one started.
                        if got == "0 0" or (match and match[0][1] < latest[0]):
                            violations.append("%s on %s: read %r, but %r had returned (%.6f) before the read began (%.6f)" % (f, root, got, latest[2], latest[1], start))
            threads = [threading.Thread(target=writer, args=("a", a, 1)), threading.Thread(target=writer, args=("b", b, 2)),
                       threading.Thread(target=reader, args=(a,)), threading.Thread(target=reader, args=(b,))]
            for t in threads: t.start()
            for t in threads: t.join()
            writes = sum(len(v) for v in done.values())
            print("writes %d reads %d violations %d" % (writes, reads[0], len(violations)))
            for v in violations[:10]: print(v)
            sys.exit(1 if violations or writes < 50 or reads[0] < 50 else 0)
            """#
        let r = Commands.python(script, args: [p.a.mountpoint, p.b.mountpoint])
        XCTAssertSucceeds(r, "cross-node consistency\n\(p.a.daemonLog())\n\(p.b.daemonLog())")
        try waitDrained(p)
    }

    func testBothNodesCreatingAndRemovingInOneDirectoryAgree() throws {
        let p = try startPair()
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            mkdir $A/shared
            (for i in $(seq 60); do echo a$i > $A/shared/a$i; mv $A/shared/a$i $A/shared/ra$i; done) &
            (for i in $(seq 60); do echo b$i > $B/shared/b$i; rm -f $B/shared/ra$((i/2)); done) &
            wait
            test "$(ls $A/shared | sort)" = "$(ls $B/shared | sort)"
            for f in $(ls $A/shared); do test "$(cat $A/shared/$f)" = "$(cat $B/shared/$f)"; done
            """)
        try waitDrained(p)
    }

    func testARestartedDaemonReconnectsAndThePairConverges() throws {
        var p = try startPair()
        shell("echo one > \(quote(p.a.mountpoint))/one && echo two > \(quote(p.b.mountpoint))/two")
        try waitDrained(p)
        // B gives its cold, in-sync tokens back (release policy), after which A may serve everything alone.
        try waitUntil("B released its write tokens") { (try mirror(p.b)["mos"] as? Int) == 0 }
        XCTAssertEqual(p.b.unmount()?.status, 0, "B stops cleanly")
        // A keeps serving what it holds while B is away.
        shell("cat \(quote(p.a.mountpoint))/one >/dev/null && ls \(quote(p.a.mountpoint)) >/dev/null")
        p.b = try mount(p.storeB, at: "mnt-b")
        try waitConnected(p.b)
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            test "$(cat $B/one)" = one && test "$(cat $A/two)" = two
            echo three > $B/three && test "$(cat $A/three)" = three
            """)
        try waitDrained(p)
        XCTAssertGreaterThanOrEqual(try counter(p.a, "handshakes"), 2, "A saw B come back")
    }

    func testAWrongSecretOrGarbageOnThePortIsRefusedAndChangesNothing() throws {
        let p = try startPair()
        shell("echo kept > \(quote(p.a.mountpoint))/kept")
        // A third store with another secret claims to be A's peer.
        FileManager.default.createFile(atPath: path("other-secret"), contents: Data(repeating: 7, count: 32))
        let intruder = path("intruder")
        XCTAssertSucceeds(Commands.twinfs([
            "init", intruder, "--node", "mallory", "--node-id", "2", "--listen", "127.0.0.1:\(freeLoopbackPort())",
            "--peer", "127.0.0.1:\(portA)", "--secret-file", path("other-secret"),
        ]))
        let m = try mount(intruder, at: "mnt-x")
        let before = (try status(p.a)["peer"] as? [String: Any])?["rejections"] as? Int ?? 0
        try waitUntil("A refuses the intruder") {
            ((try status(p.a)["peer"] as? [String: Any])?["rejections"] as? Int ?? 0) > before
        }
        try waitUntil("the intruder logs its refusal") { m.daemonLog().contains("refused") }
        XCTAssertTrue(p.a.daemonLog().contains("refused"), p.a.daemonLog())
        // Garbage on A's port.
        let r = Commands.python(
            "import socket,os\nfor i in range(5):\n  s=socket.create_connection(('127.0.0.1',\(portA)))\n  s.sendall(os.urandom(5000))\n  s.close()\n")
        XCTAssertSucceeds(r)
        XCTAssertEqual((try status(p.a)["peer"] as? [String: Any])?["connected"] as? Bool, true, "A keeps its real peer")
        shell("test \"$(cat \(quote(p.b.mountpoint))/kept)\" = kept")
        // Nothing reached the intruder (its store holds only its root; reading through its mount would wait for
        // a peer it never gets: it is a joining store).
        XCTAssertEqual(try status(m)["inodes"] as? Int, 1, "the intruder's store is still empty")
    }
}

/// fsync and a missing peer.
final class PairDurabilityTests: PairTestCase {
    /// fsync=mirror (the default): when fsync returns, the peer's store already holds the data.
    func testFsyncReturnsOnlyOnceThePeerStoreHoldsTheData() throws {
        let p = try startPair()
        let script = #"""
            import os, sys
            mnt, peer_store = sys.argv[1], sys.argv[2]
            for round in range(5):
                data = os.urandom(300000 + round)
                fd = os.open(os.path.join(mnt, "synced%d" % round), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, data)
                os.fsync(fd)
                ino = os.fstat(fd).st_ino
                os.close(fd)
                # The peer's copy, read straight from its store (data/XX/<ino hex>), right after fsync returned.
                path = os.path.join(peer_store, "data", "%02x" % (ino & 0xff), "%x" % ino)
                with open(path, "rb") as f: got = f.read()
                if got[:len(data)] != data:
                    print("round %d: the peer's store has %d matching bytes of %d" % (round, sum(1 for a, b in zip(got, data) if a == b), len(data)))
                    sys.exit(1)
            print("ok")
            """#
        XCTAssertSucceeds(Commands.python(script, args: [p.a.mountpoint, p.storeB]), "fsync=mirror")
    }

    /// Without its peer a node serves what it holds and fails the rest with EIO after peer_timeout, never stale data.
    func testWithoutThePeerOnlyWhatANodeHoldsIsServedAndTheRestFailsWithEIO() throws {
        let p = try startPair(options: ["allow_other", "peer_timeout=2"])
        shell(
            """
            echo mine > \(quote(p.a.mountpoint))/mine
            mkdir \(quote(p.b.mountpoint))/theirs && echo theirs > \(quote(p.b.mountpoint))/theirs/file
            cat \(quote(p.a.mountpoint))/mine >/dev/null
            """)
        p.b.killHard()
        let started = Date()
        let r = Commands.sh("cat \(quote(p.a.mountpoint))/theirs/file")
        let waited = Date().timeIntervalSince(started)
        XCTAssertFalse(r.ok, "a location the lost peer held is not served: \(r)")
        XCTAssertTrue(r.stderr.contains("Input/output error"), "it fails with EIO: \(r)")
        XCTAssertGreaterThanOrEqual(waited, 1.5, "it waited for the peer first")
        XCTAssertLessThan(waited, 20, "and not much longer than peer_timeout")
        shell("test \"$(cat \(quote(p.a.mountpoint))/mine)\" = mine && echo more >> \(quote(p.a.mountpoint))/mine")
    }
}

/// The pair behind a WAN-like link (the delaying proxy, 5 ms each way): held tracks cost no round trip, and a
/// cold read on the other node pulls the data.
final class PairOverWANTests: PairTestCase {
    func testWritesToHeldTracksNeedNoRoundTripAndAColdReadPulls() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: ProxyTests.proxyBinary), "no \(ProxyTests.proxyBinary): build it")
        let p = try startPair(delayMs: 5)
        // The first write marks (one round trip); the file is then held by A.
        shell("dd if=/dev/zero of=\(quote(p.a.mountpoint))/held bs=64K count=4 status=none")
        let waitsBefore = try counter(p.a, "operationsWithRoundTrip")
        let grantedBefore = try counter(p.a, "operationsGranted")
        shell(
            """
            exec 3<>\(quote(p.a.mountpoint))/held
            for i in $(seq 200); do printf 'x%05d' $i | dd of=\(quote(p.a.mountpoint))/held bs=6 seek=$((i % 100)) conv=notrunc status=none; done
            """)
        let waitsAfter = try counter(p.a, "operationsWithRoundTrip")
        let grantedAfter = try counter(p.a, "operationsGranted")
        XCTAssertGreaterThan(grantedAfter - grantedBefore, 400, "the rewrites went through the core")
        XCTAssertEqual(waitsAfter - waitsBefore, 0, "rewriting held tracks never waited on the peer")
        // A cold read on B of a file just written on A pulls and is correct.
        shell("head -c 300000 /dev/urandom > $S/payload && cp $S/payload \(quote(p.a.mountpoint))/fresh")
        let pullsBefore = try counter(p.b, "pullsSent")
        shell("cmp $S/payload \(quote(p.b.mountpoint))/fresh")
        XCTAssertGreaterThan(try counter(p.b, "pullsSent"), pullsBefore, "B pulled what A had just written")
        try waitDrained(p)
    }
}
