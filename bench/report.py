"""Turn a benchmark's JSON lines into the Markdown tables the README shows.

usage: report.py locks|jobs|checkout RESULTS.jsonl
"""
import json
import statistics
import sys


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def locks(rows):
    rss = {r["rss"]: r["peak_rss_kb"] for r in rows if "rss" in r}
    points = [r for r in rows if "pairs_per_s" in r]
    etcd8 = next((r["pairs_per_s"] for r in points if r["target"] == "etcd" and r["clients"] == 8),
                 None)
    queued = [r for r in points if r.get("wait_ms")]
    points = [r for r in points if not r.get("wait_ms")]
    print("| system | clients | pairs/s | p50 ms | p99 ms | vs etcd @8 | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in points:
        label = r["label"] or r["target"]
        ratio = f"{r['pairs_per_s'] / etcd8:.1f}×" if etcd8 and r["clients"] == 8 else ""
        mem = rss.get(label.split(" ")[0])
        mem_s = f"{mem / 1024:.0f} MiB" if mem else ""
        print(f"| {label} | {r['clients']} | {r['pairs_per_s']:,.0f} | {fmt(r.get('p50_ms'))} "
              f"| {fmt(r.get('p99_ms'))} | {ratio} | {mem_s} |")
    if queued:
        print()
        print("| system | clients blocking on one lock | hand-overs/s | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for r in queued:
            print(f"| {r['label'] or r['target']} | {r['clients']} | {r['pairs_per_s']:,.0f} "
                  f"| {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} |")


def jobs(rows):
    rss = {r["rss"]: r["peak_rss_kb"] for r in rows if "rss" in r}
    ours = {}
    for r in rows:
        if r.get("bench"):
            ours[(r["bench"], r["label"])] = r
    print("| system | process, 10 workers | process, 100 workers | submitted → done, 10 workers "
          "| submitted → done, 100 workers | submit one by one, 1 client "
          "(p50/p99 ms) | submit one by one, 64 clients | submit in batches of 1000 "
          "| ready-to-start p50/p99 ms: pull / embedded | claim with 1M queued p50/p99 ms "
          "| peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for engine in ("sqlite", "postgres"):
        b = f"backbone-{engine}"
        g = lambda k, l: ours.get((k, l), {})
        sub, bat, lat, start = g("submit", b), g("batch", b), g("latency", b), g("start", b)
        sub64 = g("submit", b + "-c64")
        deep = g("deep", b)
        mem = max(v for k, v in rss.items() if k.startswith(b)) if rss else 0
        print(f"| Backbone, {engine} | {g('process', b + '-w10').get('jobs_per_s', 0):,.0f} "
              f"| {g('process', b + '-w100').get('jobs_per_s', 0):,.0f} "
              f"| {g('flow', b + '-w10').get('jobs_per_s', 0):,.0f} "
              f"| {g('flow', b + '-w100').get('jobs_per_s', 0):,.0f} "
              f"| {sub.get('jobs_per_s', 0):,.0f} ({fmt(sub.get('p50_ms'))}/{fmt(sub.get('p99_ms'))}) "
              f"| {sub64.get('jobs_per_s', 0):,.0f} "
              f"| {bat.get('jobs_per_s', 0):,.0f} "
              f"| {fmt(lat.get('p50_ms'))}/{fmt(lat.get('p99_ms'))} / "
              f"{start.get('p50_ms', 0):.0f}/{start.get('p99_ms', 0):.0f} "
              f"| {fmt(deep.get('claim_p50_ms'))}/{fmt(deep.get('claim_p99_ms'))} "
              f"| {mem / 1024:.0f} MiB |")
    peers = {}
    for r in rows:
        if r.get("peer"):
            peers.setdefault(r["peer"], {})[r["CONC"]] = r
    names = {"graphile-worker": "graphile-worker (PostgreSQL)", "pg-boss": "pg-boss (PostgreSQL)",
             "bullmq": "BullMQ (Redis, no persistence)", "celery": "Celery (Redis, no persistence)"}
    for peer, by_conc in peers.items():
        r10, r100 = by_conc.get(10, {}), by_conc.get(100, {})
        print(f"| {names.get(peer, peer)} | {r10.get('process_per_s', 0):,.0f} "
              f"| {r100.get('process_per_s', 0):,.0f} | – | – "
              f"| {r10.get('enqueue_single_per_s', 0):,.0f} "
              f"| – | {r10.get('enqueue_batch_per_s', 0):,.0f} | – | – | – |")
    print()
    for engine in ("sqlite", "postgres"):
        deep = ours.get(("deep", f"backbone-{engine}"), {})
        if "metrics_scrape_ms" in deep:
            print(f"A /metrics scrape with {deep['queued']:,} jobs queued on {engine}: "
                  f"{deep['metrics_scrape_ms']:.0f} ms.")


def checkout(rows):
    rss = {r["rss"]: r["peak_rss_kb"] for r in rows if "rss" in r}
    print("| engine | checkouts accepted/s (p50/p99 ms) | reservations/s, 1 hot SKU (p50/p99 ms) "
          "| reservations/s, 10,000 SKUs (p50/p99 ms) | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for engine in ("sqlite", "postgres"):
        label = f"backbone-{engine}"
        mine = [r for r in rows if r.get("label") == label and r["bench"] != "saga"]
        cell = {}
        for r in mine:
            key = r["bench"] if r["bench"] == "checkout" else f"reserve-{r['skus']}"
            cell[key] = f"{r['per_s']:,.0f} ({fmt(r['p50_ms'])}/{fmt(r['p99_ms'])})"
        mem = rss.get(label, 0)
        print(f"| {engine} | {cell.get('checkout', '–')} | {cell.get('reserve-1', '–')} "
              f"| {cell.get('reserve-10000', '–')} | {mem / 1024:.0f} MiB |")
    print()
    saga(rows)


def saga(rows):
    """Checkouts end to end (202 -> COMPLETED): completed per second in bursts
    drained by the saga workers (the median, and the range when there were
    several), then p50/p99 at half the median rate."""
    rss = {r["rss"]: r["peak_rss_kb"] for r in rows if "rss" in r}
    print("| engine | PSP latency | completed checkouts/s: median (range) | at half that rate: p50 / p99 ms "
          "| peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for engine in ("sqlite", "postgres"):
        label = f"backbone-{engine}"
        for psp in ("0ms", "50ms"):
            mine = [r for r in rows if r.get("bench") == "saga" and r.get("label") == label
                    and r.get("psp") == psp]
            peak = [r for r in mine if r["rate"] == 0]
            half = [r for r in mine if r["rate"] > 0]
            if not peak:
                continue
            lat = f"{fmt(half[0]['p50_ms'])} / {fmt(half[0]['p99_ms'])}" if half else "–"
            per_s = sorted(r["per_s"] for r in peak)
            done = f"{statistics.median(per_s):,.0f}"
            if len(per_s) > 1:
                done += f" ({per_s[0]:,.0f}–{per_s[-1]:,.0f})"
            print(f"| {engine} | {psp} | {done} | {lat} "
                  f"| {rss.get(label + '-saga', 0) / 1024:.0f} MiB |")


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        data = [json.loads(line) for line in f if line.strip()]
    {"locks": locks, "jobs": jobs, "checkout": checkout, "saga": saga}[kind](data)
