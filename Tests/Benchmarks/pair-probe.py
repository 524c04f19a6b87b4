# What the round trips of a pair are for: runs one workload on node A of a pair from pair.sh and prints the delta of
# every mirror counter of `twinfs status --json` (marks, pulls, locations marked and predicted, releases...), so a
# figure of pair-bench.sh can be taken apart. Not part of `swift test`.
#
#   python3 Tests/Benchmarks/pair-probe.py create MNT STORE TWINFS_BIN [N]      N files of 4 KiB in 100 directories
#   python3 Tests/Benchmarks/pair-probe.py seq MNT STORE TWINFS_BIN [MIB]       fio sequential write (as pair-bench)
#   python3 Tests/Benchmarks/pair-probe.py drain MNT STORE TWINFS_BIN [MIB] STORE_B
#       the sequential write, then A's OOS, pushes in flight and push rate (and B's syncs) every 0.5 s until drained
import json, os, subprocess, sys, time

what, mnt, store, twinfs = sys.argv[1:5]
size = int(sys.argv[5]) if len(sys.argv) > 5 else (10000 if what == "create" else 1024)


def status(s=store):
    return json.loads(subprocess.check_output([twinfs, "status", s, "--json"]))


def deltas(c0, c1, n, unit):
    for k in sorted(c1):
        if isinstance(c1[k], (int, float)) and c1[k] != c0.get(k):
            print("  %-24s %10d   per %s: %.1f" % (k, c1[k] - c0[k], unit, (c1[k] - c0[k]) / n))


def fio(name):
    return subprocess.Popen(["fio", "--name=seq", "--filename=" + name, "--rw=write", "--bs=1m", "--size=%dm" % size,
                             "--ioengine=psync", "--output-format=terse"], stdout=subprocess.DEVNULL)


root = os.path.join(mnt, "probe-%d" % time.time_ns())
if what == "create":
    os.makedirs(root)
    data = os.urandom(4096)
    c0 = status()["mirror"]["counters"]
    t = time.monotonic()
    for d in range(100):
        os.mkdir(f"{root}/c{d:02d}")
    for i in range(size):
        fd = os.open(f"{root}/c{i % 100:02d}/f{i:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, data)
        os.close(fd)
    dt = time.monotonic() - t
    print("%d creates in 100 directories: %.0f/s" % (size, size / dt))
    deltas(c0, status()["mirror"]["counters"], size / 1000, "1,000 creates")
    subprocess.check_call(["rm", "-rf", root])
elif what == "seq":
    c0 = status()["mirror"]["counters"]
    t = time.monotonic()
    fio(root).wait()
    dt = time.monotonic() - t
    s = status()["mirror"]
    print("sequential write of %d MiB: %.0f MB/s, A's OOS at the end %d" % (size, size * 1.048576 / dt, s["oos"]))
    deltas(c0, s["counters"], size / 1024, "GiB")
    os.unlink(root)
elif what == "drain":
    store_b = sys.argv[6]
    t0 = time.monotonic()
    p = fio(root)
    write_end, last = None, None
    while True:
        a, b = status(), status(store_b)
        now = time.monotonic() - t0
        if write_end is None and p.poll() is not None:
            write_end = now
        m, cb = a["mirror"], b["mirror"]["counters"]
        row = (now, m["counters"]["bytesPushed"], cb["metadataSyncs"])
        if last:
            dt = row[0] - last[0]
            print("%6.2f s  A's OOS %6d  in flight %4d  pushed %5.1f MB/s  B syncs %4.0f/s%s" % (
                now, m["oos"], m["inFlightPushes"], (row[1] - last[1]) / dt / 1e6, (row[2] - last[2]) / dt,
                "  (writing)" if write_end is None else ""))
        last = row
        if write_end is not None and m["oos"] == 0 and m["inFlightPushes"] == 0:
            break
        time.sleep(0.5)
    total = time.monotonic() - t0
    print("written in %.2f s, drained %.2f s after the start: %.1f MB/s" % (write_end, total, size * 1.048576 / total))
    os.unlink(root)
else:
    sys.exit("usage: pair-probe.py create|seq|drain MNT STORE TWINFS_BIN [N|MIB] [STORE_B]")
