"""Turn a benchmark's JSON lines into the Markdown table the README shows.

usage: report.py locks RESULTS.jsonl
"""
import json
import sys


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def locks(rows):
    rss = {r["rss"]: r["peak_rss_kb"] for r in rows if "rss" in r}
    points = [r for r in rows if "pairs_per_s" in r]
    etcd8 = next((r["pairs_per_s"] for r in points if r["target"] == "etcd" and r["clients"] == 8),
                 None)
    print("| system | clients | pairs/s | p50 ms | p99 ms | vs etcd @8 | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in points:
        label = r["label"] or r["target"]
        ratio = f"{r['pairs_per_s'] / etcd8:.1f}×" if etcd8 and r["clients"] == 8 else ""
        mem = rss.get(label.split(" ")[0])
        mem_s = f"{mem / 1024:.0f} MiB" if mem else ""
        print(f"| {label} | {r['clients']} | {r['pairs_per_s']:,.0f} | {fmt(r.get('p50_ms'))} "
              f"| {fmt(r.get('p99_ms'))} | {ratio} | {mem_s} |")


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        data = [json.loads(line) for line in f if line.strip()]
    {"locks": locks}[kind](data)
