"""A deployment plan past one machine, derived from measured per-point and per-verdict costs.

Reads the figures `benchmarks/store_scale.py --json` and `benchmarks/bank_budget.py
--json` wrote (or takes them as flags) and prints, for a target of S settings x N
nominal images at R verdicts/s: Qdrant memory, nodes, shards and replicas; API and
worker processes; patch bank memory. Every line names the figure it came from, so a
re-measured cost changes the plan by rerunning this.

    python benchmarks/scale_plan.py                                   # 100 settings x 1M images, 50 verdicts/s
    python benchmarks/scale_plan.py --store store_scale.json --banks bank_budget.json
    python benchmarks/scale_plan.py --settings 20 --images 200000 --rate 10 --patch-settings 5

Model (stated so it can be argued with):
- Qdrant holds each point as its float32 vector (the original, for exact rescoring),
  an HNSW graph (M=32: about 2 x 32 links of 4 bytes on layer 0 plus upper layers) and
  a payload; with scalar quantization only the 1-byte-per-dimension codes and the graph
  must be in RAM and the originals can stay on disk (`on_disk: true`), read for the
  rescoring of a few candidates per query.
- One verdict = one search of its setting's collection, on the fastest approximate
  index store_scale measured with recall@10 >= 0.99; its p50 at the benchmark's n is
  scaled by log(N)/log(n), right for HNSW; an IVF's cost grows about with sqrt(N), so
  feed this a store_scale run at the target N (as the README's 1M run) rather than
  trust the scaling.
- An API process serves one verdict at a time per core: backbone forward plus
  overhead (README's API latency figure) plus the Qdrant round trip.
- A patch setting's bank (bank_bytes per image) must stay resident in the process
  that serves it: at this size reloading it per verdict costs seconds (bank_budget's
  reload time per image x N).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=int, default=100)
    parser.add_argument("--images", type=int, default=1_000_000, help="nominal images per setting")
    parser.add_argument("--rate", type=float, default=50.0, help="verdicts per second, all settings together")
    parser.add_argument("--patch-settings", type=int, default=0, help="of the settings, how many score by patches")
    parser.add_argument("--index-rate", type=float, default=10.0, help="nominal images indexed per second (workers)")
    parser.add_argument("--dim", type=int, default=1280, help="global vector length (efficientnet_lite0)")
    parser.add_argument("--store", help="store_scale.py --json output")
    parser.add_argument("--banks", help="bank_budget.py --json output")
    parser.add_argument("--hnsw-ms", type=float, default=None, help="HNSW query p50 at --hnsw-n points (ms)")
    parser.add_argument("--hnsw-n", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=200, help="payload and id per point in Qdrant")
    parser.add_argument("--graph-bytes", type=int, default=None, help="HNSW graph bytes per point")
    parser.add_argument("--bank-bytes-per-image", type=float, default=None)
    parser.add_argument("--forward-ms", type=float, default=12.0, help="backbone forward per image (README: 12 ms)")
    parser.add_argument("--api-overhead-ms", type=float, default=11.0,
                        help="decode, HTTP, verdict per image beyond forward and search (README: 22.9 ms bare - 12)")
    parser.add_argument("--round-trip-ms", type=float, default=1.0, help="network round trip to Qdrant")
    parser.add_argument("--node-ram-gib", type=float, default=64.0, help="RAM of one Qdrant node")
    parser.add_argument("--node-cores", type=int, default=16, help="cores of one Qdrant node")
    parser.add_argument("--replicas", type=int, default=2, help="copies of each shard (1 survives no node loss)")
    parser.add_argument("--fill", type=float, default=0.6, help="fraction of a node's RAM used for vectors")
    parser.add_argument("--utilisation", type=float, default=0.5, help="target CPU utilisation (room for bursts)")
    parser.add_argument("--shard-gib", type=float, default=16.0, help="largest shard wanted (moves and recoveries)")
    args = parser.parse_args()

    # ---- measured figures, or the flags' defaults
    hnsw_ms, hnsw_n, graph = args.hnsw_ms, args.hnsw_n, args.graph_bytes
    source = "flags"
    if args.store:
        data = json.loads(Path(args.store).read_text())
        approximate = [r for r in data["results"] if r["method"] not in ("numpy", "edge")]
        good = [r for r in approximate if r["recall"] >= 0.99]
        if approximate:
            # The fastest index with recall@10 >= 0.99; failing that, the one with the best recall.
            best = min(good, key=lambda r: r["p50_ms"]) if good else max(approximate, key=lambda r: r["recall"])
            hnsw_ms, hnsw_n = best["p50_ms"], data["n"]
            source = (f"{args.store} ({best['method']} {best['variant']}, recall@10 {best['recall']:.3f} "
                      f"at {data['n']:,})")
        hnsw = [r for r in data["results"] if r["method"] == "hnsw"]
        if hnsw and graph is None:
            graph = max(0, hnsw[0]["disk_bytes"] / data["n"] - data["dim"] * 4)
    hnsw_ms = hnsw_ms if hnsw_ms is not None else 2.0
    graph = graph if graph is not None else 2 * 32 * 4 * 1.1
    bank_per_image, reload_per_image = args.bank_bytes_per_image, None
    if args.banks:
        banks = json.loads(Path(args.banks).read_text())
        bank_per_image = bank_per_image or banks["bank_bytes_per_image"]
        reload_per_image = banks["reload_s_per_image"]
    bank_per_image = bank_per_image or 7_600.0  # README: about 7.6 kB per nominal image (152-d; 11 kB at 256-d)

    points = args.settings * args.images
    print(f"Target: {args.settings} settings x {args.images:,} images = {points:,} points of {args.dim}-d, "
          f"{args.rate:g} verdicts/s, {args.patch_settings} patch settings")
    print(f"Costs from {source}: query p50 {hnsw_ms:.2f} ms at {hnsw_n:,} points; graph {graph:.0f} B/point; "
          f"bank {bank_per_image / 1000:.1f} kB/image")
    print()

    # ---- Qdrant
    full = args.dim * 4 + graph + args.payload_bytes
    quantized = args.dim * 1 + graph + args.payload_bytes
    per_collection_gib = args.images * full / GIB
    shards = max(1, math.ceil(per_collection_gib / args.shard_gib))
    query_ms = hnsw_ms * math.log(max(args.images, 2)) / math.log(max(hnsw_n, 2))
    search_cores = args.rate * query_ms / 1000 / args.utilisation  # one replica answers each query
    print("| Qdrant | vectors in RAM (float32) | SQ8 codes in RAM, originals on disk |")
    print("| --- | --- | --- |")
    ram = {name: points * size * args.replicas / GIB for name, size in (("full", full), ("sq", quantized))}
    nodes = {
        name: max(args.replicas, math.ceil(ram[name] / (args.node_ram_gib * args.fill)),
                  math.ceil(search_cores / args.node_cores))
        for name in ram
    }
    print(f"| bytes per point | {full:,.0f} | {quantized:,.0f} (+ {args.dim * 4:,} on disk) |")
    print(f"| RAM, all replicas | {ram['full']:,.0f} GiB | {ram['sq']:,.0f} GiB |")
    print(f"| nodes of {args.node_ram_gib:g} GiB / {args.node_cores} cores | {nodes['full']} | {nodes['sq']} |")
    print(f"| disk, all replicas | {points * full * args.replicas / GIB:,.0f} GiB | "
          f"{points * (quantized + args.dim * 4) * args.replicas / GIB:,.0f} GiB |")
    print(f"| collections | {args.settings} (one per setting, plus versions during a re-index) | same |")
    print(f"| shards per collection | {shards} ({per_collection_gib:.1f} GiB each collection, <= {args.shard_gib:g} GiB a shard) | same |")
    print(f"| replicas | {args.replicas} | same |")
    print(f"| query p50 at {args.images:,} | {query_ms:.1f} ms (log-scaled) | about the same + rescoring reads |")
    print(f"| search cores at {args.rate:g}/s | {search_cores:.2f} | same |")
    print()

    # ---- API and workers
    verdict_ms = args.forward_ms + args.api_overhead_ms + args.round_trip_ms + query_ms
    api_cores = args.rate * verdict_ms / 1000 / args.utilisation
    api = max(2, math.ceil(api_cores))
    worker_cores = args.index_rate * (args.forward_ms + 2 * args.round_trip_ms) / 1000 / args.utilisation
    workers = max(1, math.ceil(worker_cores))
    print("| processes | count | from |")
    print("| --- | --- | --- |")
    print(f"| API (1 core each, `--workers`) | {api} | {args.rate:g}/s x {verdict_ms:.1f} ms per verdict "
          f"at {args.utilisation:.0%} use (2 at least, for availability) |")
    print(f"| Celery workers (1 core each) | {workers} | {args.index_rate:g} images/s indexed x "
          f"{args.forward_ms + 2 * args.round_trip_ms:.0f} ms |")
    print(f"| API + worker RAM | {(api + workers) * 1.0:.0f} GiB | about 1 GiB a process (backbone, torch) |")
    if args.patch_settings:
        bank_gib = args.images * bank_per_image / GIB
        total = args.patch_settings * bank_gib
        print(f"| patch bank RAM | {total:,.0f} GiB ({bank_gib:.1f} GiB a setting) | {bank_per_image / 1000:.1f} kB/image; "
              "route each patch setting to the processes holding its bank, NOMINAL_MAX_BANK_BYTES >= their banks |")
        if reload_per_image:
            print(f"| bank reload (extrapolated) | {reload_per_image * args.images:,.0f} s a setting | why banks must stay resident "
                  "at this size: an eviction costs a verdict that long |")
    print()
    print(f"Qdrant: {nodes['sq']} nodes with SQ8 and originals on disk ({nodes['full']} with float32 in RAM), "
          f"{shards} shard(s) x {args.replicas} replicas per collection; {api} API + {workers} worker processes.")


if __name__ == "__main__":
    main()
