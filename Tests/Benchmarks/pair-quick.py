# A two-minute check of the pair figures that the link and shell fixes moved: 4 KiB write latency without and
# with fsync (fsync=mirror), and round trips per 1,000 creates from the status counters.
# Usage: python3 Tests/Benchmarks/pair-quick.py MNT STORE TWINFS_BIN   (on node A of a pair from pair.sh)
import os, sys, time, json, subprocess
mnt, store, twinfs = sys.argv[1], sys.argv[2], sys.argv[3]
def counters():
    d = json.loads(subprocess.check_output([twinfs, "status", store, "--json"]))
    return d["mirror"]["counters"]
fd = os.open(os.path.join(mnt, "lat"), os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, os.urandom(16 << 20)); os.fsync(fd)
def lat(n, sync):
    ts = []
    for i in range(n):
        off = (i * 7919 % 4096) * 4096
        t = time.monotonic(); os.pwrite(fd, os.urandom(4096), off)
        if sync: os.fsync(fd)
        ts.append((time.monotonic() - t) * 1000)
    ts.sort(); return sum(ts) / len(ts), ts[len(ts) // 2], ts[int(len(ts) * .99)]
print("4K write no fsync: mean %.3f p50 %.3f p99 %.3f ms" % lat(3000, False))
print("4K write+fsync (mirror): mean %.3f p50 %.3f p99 %.3f ms" % lat(200, True))
os.makedirs(os.path.join(mnt, "c"), exist_ok=True)
c0 = counters(); t = time.monotonic(); N = 3000
for i in range(N):
    f = os.open(os.path.join(mnt, "c", "f%d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.write(f, b"x" * 4096); os.close(f)
dt = time.monotonic() - t; c1 = counters()
print("creates: %.0f/s, round trips per 1000: %.1f, marks per 1000: %.1f" % (N / dt, (c1["roundTrips"] - c0["roundTrips"]) * 1000 / N, (c1["marksSent"] - c0["marksSent"]) * 1000 / N))
