#!/usr/bin/env python3
# report.py RESULTS_DIR: the table of Tests/Benchmarks/run.sh. Reads RESULTS_DIR/<target>.<round>/ (fio JSON
# per section + meta.json, written by shared/bench/run_target.sh) and rss.json; prints medians over rounds
# and each twinfs figure as a ratio of passthrough_ll's, against the targets.
# Never: invent a figure; a missing or failed section prints as "-".
import json, os, statistics, sys

res = sys.argv[1]
targets = ["plain", "passthrough_ll", "twinfs", "passthrough_ll_dp"]

# (label, unit, source, extractor, target ratio vs passthrough_ll or None)
def fio(section, kind, field):
    def get(d):
        try:
            with open(os.path.join(d, section + ".json")) as f:
                text = f.read()
            job = json.loads(text[text.index("{"):])["jobs"][0][kind]
            return job[field]
        except Exception:
            return None
    return get

def meta(field):
    def get(d):
        try:
            with open(os.path.join(d, "meta.json")) as f:
                return json.load(f)[field]
        except Exception:
            return None
    return get

rows = [
    ("seq write 1 MiB", "MiB/s", fio("seqwrite", "write", "bw_bytes"), 0.9, 1 / 2**20),
    ("seq read 1 MiB (cold)", "MiB/s", fio("seqread", "read", "bw_bytes"), 0.9, 1 / 2**20),
    ("4 KiB write+fsync", "IOPS", fio("randwrite_fsync", "write", "iops"), 0.8, 1),
    ("4 KiB rand read cold", "IOPS", fio("randread_cold", "read", "iops"), None, 1),
    ("4 KiB rand read warm", "IOPS", fio("randread_warm", "read", "iops"), None, 1),
    ("create 4 KiB files", "ops/s", meta("create_ops_s"), 0.7, 1),
    ("stat (cold)", "ops/s", meta("stat_cold_ops_s"), 0.7, 1),
    ("unlink", "ops/s", meta("unlink_ops_s"), 0.7, 1),
]

rounds = {t: sorted(d for d in os.listdir(res) if d.startswith(t + ".")) for t in targets}
n_rounds = max((len(v) for v in rounds.values()), default=0)

def median(t, get, scale):
    vals = [get(os.path.join(res, d)) for d in rounds[t]]
    vals = [v * scale for v in vals if v is not None and v > 0]
    return statistics.median(vals) if vals else None

def fmt(v):
    if v is None: return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"

if n_rounds:
    print(f"\nmedians of {n_rounds} round(s); ratio = twinfs / passthrough_ll\n")
    print(f"| {'measure':<22} | {'unit':<5} | {'plain dir':>10} | {'passthrough_ll':>14} | {'twinfs':>10} | {'ratio':>6} | {'target':>6} | {'met':<3} |")
    print(f"|{'-'*24}|{'-'*7}|{'-'*12}|{'-'*16}|{'-'*12}|{'-'*8}|{'-'*8}|{'-'*5}|")
    for label, unit, get, target, scale in rows:
        v = {t: median(t, get, scale) for t in targets}
        ratio = v["twinfs"] / v["passthrough_ll"] if v["twinfs"] and v["passthrough_ll"] else None
        met = "-" if target is None or ratio is None else ("yes" if ratio >= target else "NO")
        print(f"| {label:<22} | {unit:<5} | {fmt(v['plain']):>10} | {fmt(v['passthrough_ll']):>14} | {fmt(v['twinfs']):>10} | "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>6} | {(f'{target}x' if target else ''):>6} | {met:<3} |")

if n_rounds and rounds["passthrough_ll_dp"]:
    print("\nmeta.py against passthrough_ll -o default_permissions (the option twinfs mounts with; the table's reference runs without it)\n")
    print(f"| {'measure':<22} | {'unit':<5} | {'pt_ll + dp':>10} | {'pt_ll+dp / pt_ll':>16} | {'twinfs / pt_ll+dp':>17} |")
    print(f"|{'-'*24}|{'-'*7}|{'-'*12}|{'-'*18}|{'-'*19}|")
    for label, unit, get, target, scale in rows:
        if not label.startswith(("create", "stat", "unlink")): continue
        v = {t: median(t, get, scale) for t in targets}
        dp = v["passthrough_ll_dp"]
        own = dp / v["passthrough_ll"] if dp and v["passthrough_ll"] else None
        tw = v["twinfs"] / dp if dp and v["twinfs"] else None
        print(f"| {label:<22} | {unit:<5} | {fmt(dp):>10} | {(f'{own:.2f}x' if own else '-'):>16} | {(f'{tw:.2f}x' if tw else '-'):>17} |")

rss_path = os.path.join(res, "rss.json")
if os.path.exists(rss_path):
    with open(rss_path) as f:
        r = json.load(f)
    print(f"\ntwinfs daemon memory with {r['files']:,} files in the store (found {r['found']:,} through the mount); target < 64 MiB")
    for key, label in [("after_create", "after creating them (same daemon)"), ("after_remount", "fresh daemon, just mounted"),
                       ("after_find_stat_all", "fresh daemon, after find | stat of all"), ("after_drop_caches", "after drop_caches (kernel forgets)")]:
        m = r[key]
        print(f"  {label:<42} RSS {m['rss_kib'] / 1024:6.1f} MiB   peak (VmHWM) {m['hwm_kib'] / 1024:6.1f} MiB")
