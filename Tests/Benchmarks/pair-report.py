#!/usr/bin/env python3
# pair-report.py RESULTS_DIR: the figures of Tests/Benchmarks/pair-bench.sh, from the raw data it left in
# RESULTS_DIR/d<delay>/ (fio JSON, `twinfs status --json` of node A before/after each step, timings), with the
# targets of issue 4. Round trips and marks come from counter deltas, never from timing.
# Never: invent a figure; anything missing prints as "-" and its target as unknown.
import json, os, sys

res = sys.argv[1]
run = json.load(open(os.path.join(res, "run.json")))
delays = [int(d) for d in run["delays"].split()]
big_bytes = run["big_mib"] << 20
MB = 1e6


def load(*parts):
    path = os.path.join(res, *parts)
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text[text.index("{"):]) if path.endswith(".json") else float(text)
    except Exception:
        return None


def delta(d, step, counter):  # a counter of A's mirror over a step: after - before
    b, a = load(f"d{d}", step + ".before.json"), load(f"d{d}", step + ".after.json")
    if not a or not b:
        return None
    return a["mirror"]["counters"][counter] - b["mirror"]["counters"][counter]


def fio_job(d, path):
    j = load(f"d{d}", path)
    return j["jobs"][0] if j else None


def write_lat_ms(d, target, pct=None):  # 4 KiB write without fsync: completion latency
    j = fio_job(d, f"lat/{target}/w4k.json")
    if not j:
        return None
    c = j["write"]["clat_ns"]
    return (c["percentile"][pct] if pct else c["mean"]) / 1e6


def fsync_lat_ms(d, target):  # one 4 KiB write + its fsync, QD1: the mean of the pair
    j = fio_job(d, f"lat/{target}/w4k_fsync.json")
    if not j or not j["write"]["total_ios"]:
        return None
    return (j["write"]["clat_ns"]["mean"] + j["sync"]["lat_ns"]["mean"]) / 1e6


def per_write(d, target, section, counter):
    j = fio_job(d, f"lat/{target}/{section}.json")
    n = delta(d, f"lat/{target}/{section}", counter)
    return n / j["write"]["total_ios"] if j and n is not None and j["write"]["total_ios"] else None


def creates_s(d, target):
    s = load(f"d{d}", f"create/{target}.seconds")
    return run["create_files"] / s if s else None


def per_1000_creates(d, counter):
    n = delta(d, "create/twinfs", counter)
    return n * 1000 / run["create_files"] if n is not None else None


def per_gib(d, step, counter):
    n = delta(d, step, counter)
    return n * (1 << 30) / big_bytes if n is not None else None


def mbs(d, path):  # a read of the big file
    s = load(f"d{d}", path + ".seconds")
    return big_bytes / s / MB if s else None


def fio_write_mbs(d, path):
    j = fio_job(d, path + ".json")
    return j["write"]["bw_bytes"] / MB if j else None


def link_mbs(d):
    j = load(f"d{d}", "drain/link.json")
    return j["bytes"] / j["seconds"] / MB if j else None


def drain_mbs(d):
    s = load(f"d{d}", "drain/total.seconds")
    return big_bytes / s / MB if s else None


def field(d, path, *keys):
    j = load(f"d{d}", path)
    for k in keys:
        j = j[k] if j else None
    return j


def fmt(v, digits=None):
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:,.{digits}f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"


def verdict(ok):
    return "-" if ok is None else ("yes" if ok else "NO")


rows = []  # (measure, unit, {delay: value}, reference text per delay, target text, met per delay)


def row(measure, unit, get, refs=None, target="", met=None):
    vals = {d: get(d) for d in delays}
    rows.append((measure, unit, vals, {d: refs(d) if refs else "" for d in delays}, target,
                 {d: met(d, vals) if met else None for d in delays}))


def ref(*pairs):  # "plain X / pt Y" for references in the same run
    def text(d):
        return " / ".join(f"{name} {fmt(get(d))}" for name, get in pairs)
    return text


def ratio_ok(a, b, limit):
    return None if a is None or b is None else a / b <= limit


base = delays[0]
row("job set: see the report.py tables above", "", lambda d: None)
row("4K write, no fsync: mean", "ms", lambda d: write_lat_ms(d, "twinfs"),
    ref(("plain", lambda d: write_lat_ms(d, "plain")), ("pt_ll", lambda d: write_lat_ms(d, "passthrough_ll")),
        ("solo", lambda d: write_lat_ms(d, "twinfs-solo"))),
    f"<= 1.5x the {base} ms figure", lambda d, v: ratio_ok(v[d], v[base], 1.5) if d != base else None)
row("4K write, no fsync: p99", "ms", lambda d: write_lat_ms(d, "twinfs", "99.000000"),
    ref(("plain", lambda d: write_lat_ms(d, "plain", "99.000000")),
        ("pt_ll", lambda d: write_lat_ms(d, "passthrough_ll", "99.000000")),
        ("solo", lambda d: write_lat_ms(d, "twinfs-solo", "99.000000"))))
row("4K write, no fsync: round trips/write", "", lambda d: per_write(d, "twinfs", "w4k", "roundTrips"), target="0")
row("4K write+fsync, fsync=mirror", "ms", lambda d: fsync_lat_ms(d, "twinfs"),
    ref(("plain", lambda d: fsync_lat_ms(d, "plain")), ("pt_ll", lambda d: fsync_lat_ms(d, "passthrough_ll")),
        ("solo", lambda d: fsync_lat_ms(d, "twinfs-solo"))),
    "~1 RTT (2x delay) over fsync=local",
    lambda d, v: None if d == 0 or v[d] is None or fsync_lat_ms(d, "twinfs-local") is None
    else (v[d] - fsync_lat_ms(d, "twinfs-local")) <= 1.5 * 2 * d)
row("4K write+fsync, fsync=mirror: round trips/fsync", "", lambda d: per_write(d, "twinfs", "w4k_fsync", "roundTrips"),
    target="~1 (sync mirror: 2)")
row("4K write+fsync, fsync=local", "ms", lambda d: fsync_lat_ms(d, "twinfs-local"))
row("4K write, no fsync, -o fsync=local mount", "ms", lambda d: write_lat_ms(d, "twinfs-local"))
row(f"create {run['create_files']:,} files of 4 KiB", "ops/s", lambda d: creates_s(d, "twinfs"),
    ref(("plain", lambda d: creates_s(d, "plain")), ("pt_ll", lambda d: creates_s(d, "passthrough_ll")),
        ("solo", lambda d: creates_s(d, "twinfs-solo"))))
row("create: round trips per 1,000", "", lambda d: per_1000_creates(d, "roundTrips"), target="<= 20 (at 5 ms)",
    met=lambda d, v: v[d] <= 20 if v[d] is not None and d > 0 else None)
row("create: marks sent per 1,000", "", lambda d: per_1000_creates(d, "marksSent"))
row(f"seq write {run['big_mib']} MiB on A", "MB/s", lambda d: fio_write_mbs(d, "seq/write"))
row("seq write: marks sent per GiB", "", lambda d: per_gib(d, "seq/write", "marksSent"), target="<= 16",
    met=lambda d, v: v[d] <= 16 if v[d] is not None else None)
row("seq write: round trips per GiB", "", lambda d: per_gib(d, "seq/write", "roundTrips"))
row("seq write: A's OOS tracks when B starts reading", "", lambda d: field(d, "seq/write.after.json", "mirror", "oos"))
row("read on B just after (pulls, not drained)", "MB/s", lambda d: mbs(d, "seq/read-b-before"),
    ref(("read on A", lambda d: mbs(d, "seq/read-a"))))
row("read on B after the drain", "MB/s", lambda d: mbs(d, "seq/read-b-after"),
    ref(("read on A", lambda d: mbs(d, "seq/read-a"))))
row("seconds from B's read to A's OOS = 0", "s", lambda d: load(f"d{d}", "seq/drain.seconds"))
row(f"paced link ({run['rate_mbps']:g} Mbit/s), raw TCP", "MB/s", link_mbs)
row(f"write {run['big_mib']} MiB on A (paced)", "MB/s", lambda d: fio_write_mbs(d, "drain/write"))
row("catch-up: write start to A's OOS = 0", "s", lambda d: load(f"d{d}", "drain/total.seconds"))
row("catch-up: write end to A's OOS = 0", "s", lambda d: load(f"d{d}", "drain/drain-after-write.seconds"))
row("drain throughput", "MB/s", drain_mbs)
row("drain throughput / raw link", "", lambda d: drain_mbs(d) / link_mbs(d) if drain_mbs(d) and link_mbs(d) else None,
    target=">= 0.80", met=lambda d, v: v[d] >= 0.8 if v[d] is not None else None)
row("read on B before drain (paced)", "MB/s", lambda d: mbs(d, "drain/read-b-before"))
row("read on B after drain (paced)", "MB/s", lambda d: mbs(d, "drain/read-b-after"))

print(f"\ntwinfs pair on node A, peer through twinfs-proxy; {run['commit']}, started {run['started']}; "
      f"big file {run['big_mib']} MiB, latency file {run['lat_mib']} MiB x {run['lat_seconds']} s, "
      f"{run['create_files']:,} creates\n")
head = "| measure | unit | " + " | ".join(f"{d} ms" for d in delays) + " | same-run reference (" + \
       " ; ".join(f"{d} ms" for d in delays) + ") | target | met |"
print(head)
print("|" + "---|" * (head.count("|") - 1))
for measure, unit, vals, refs, target, met in rows:
    if measure.startswith("job set"):
        continue
    refs_text = " ; ".join(refs[d] for d in delays) if any(refs.values()) else ""
    mets = [verdict(met[d]) for d in delays if met[d] is not None]
    print(f"| {measure} | {unit} | " + " | ".join(fmt(vals[d]) for d in delays) +
          f" | {refs_text} | {target} | {' / '.join(mets) if mets else '-'} |")
