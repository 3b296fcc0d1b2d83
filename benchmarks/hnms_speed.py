"""HNMS op speed vs torchvision.ops.nms and detectron2's batched_nms on RPN-like crowded boxes.

Single thread, one run, every method on the same inputs: N = 1K, 3K, 9K, 30K, 100K boxes, each
a jittered copy of one of N / 60 objects (the regime of an RPN in a crowded scene), scores in
random order. Times are the median CPU time of this process (``--clock wall`` for wall time),
which a shared machine disturbs less than wall time. Prints a table (ms, ns/box, speed-up over
torchvision NMS) and writes benchmarks/results/hnms_speed.{json,png} (log-log plot).

A second table (N <= ``--prefilter-max-n``, 9K by default; hnms_prefilter_speed.json) times
HNMS as a pre-filter (α = 0.73, §4.3 and Appendix C.3) on the same boxes, 5 classes: NMS@0.5
and Gaussian Soft-NMS alone vs after the pre-filter, with the share of boxes it removes.
``--tables op`` or ``--tables prefilter`` runs one of the two.

    OMP_NUM_THREADS=1 python benchmarks/hnms_speed.py            # full (about 2 min)
    python benchmarks/hnms_speed.py --quick                       # 1K and 3K only
"""

import argparse
import json
import os
import statistics
import time

import torch
import torchvision

import hnms

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def crowd(n: int, seed: int = 0, boxes_per_object: int = 60, image: float = 1000.0):
    """RPN-like boxes: n jittered boxes around n / boxes_per_object objects; random scores.

    Returns (boxes float32 [n, 4] xyxy, scores float32 [n], level ids int64 [n] in [0, 5)).
    """
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // boxes_per_object)
    centers = torch.rand(k, 2, generator=g) * image
    sizes = torch.rand(k, 2, generator=g) * 60 + 10
    owner = torch.randint(0, k, (n,), generator=g)
    c = centers[owner] + torch.randn(n, 2, generator=g) * sizes[owner] * 0.1
    wh = sizes[owner] * torch.exp(torch.randn(n, 2, generator=g) * 0.1)
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, 5, (n,), generator=g)


def timeit(fn, budget_s: float, clock=time.process_time, max_reps: int = 50):
    """Median time of fn() over repeats within about budget_s (at least 1, after a warm-up)."""
    out = fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < budget_s):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times), out


def methods(has_ext: bool):
    from detectron2.layers import batched_nms as d2_batched_nms

    m = {
        "torchvision nms@0.7": lambda b, s, lvl: torchvision.ops.nms(b, s, 0.7),
        "detectron2 batched_nms@0.7 (5 levels)": lambda b, s, lvl: d2_batched_nms(b, s, lvl, 0.7),
    }
    if has_ext:
        m["HNMS C++ α=0.7 K=1"] = lambda b, s, lvl: hnms.hnms(b, s, 0.7, 1, backend="ext")
        m["HNMS C++ α=0.7 K=2"] = lambda b, s, lvl: hnms.hnms(b, s, 0.7, 2, backend="ext")
        m["HNMS C++ batched α=0.7 K=1 (5 levels)"] = lambda b, s, lvl: hnms.batched_hnms(
            b, s, lvl, 0.7, 1, backend="ext"
        )
    m["HNMS pure torch α=0.7 K=1"] = lambda b, s, lvl: hnms.hnms(b, s, 0.7, 1, backend="torch")
    return m


def prefilter_methods():
    """(suppression alone, HNMS α = 0.73 + the suppression) pairs, per class (5 here)."""

    def soft(b, s, c):
        return hnms.batched_soft_nms(b, s, c, "gaussian", 0.5)[0]

    def nms(b, s, c):
        return torchvision.ops.batched_nms(b, s, c, 0.5)

    def prefiltered(suppress):
        def run(b, s, c):
            pre = hnms.batched_hnms(b, s, c, 0.73, 1)
            return pre[suppress(b[pre], s[pre], c[pre])]

        return run

    return {"NMS@0.5": (nms, prefiltered(nms)), "Soft-NMS": (soft, prefiltered(soft))}


def run_prefilter(sizes, budget, clock):
    """Time each suppression alone and after the pre-filter; print a table; return the rows."""
    rows = {}
    for n in sizes:
        boxes, scores, classes = crowd(n)
        removed = 1 - len(hnms.batched_hnms(boxes, scores, classes, 0.73, 1)) / n
        inputs = (boxes, scores, classes)
        for name, (alone, pre) in prefilter_methods().items():
            t_alone, _ = timeit(lambda fn=alone, x=inputs: fn(*x), budget, clock)
            t_pre, _ = timeit(lambda fn=pre, x=inputs: fn(*x), budget, clock)
            rows.setdefault(name, {})[n] = {
                "alone_ms": t_alone * 1e3,
                "prefiltered_ms": t_pre * 1e3,
                "removed": removed,
            }
    print("\nHNMS α=0.73 K=1 as a pre-filter (per class, 5 classes): suppression alone vs after it")
    print("| suppression | N | removed by HNMS | alone ms | HNMS + suppression ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        for n, r in row.items():
            speedup = r["alone_ms"] / r["prefiltered_ms"]
            print(f"| {name} | {n} | {r['removed']:.0%} | {r['alone_ms']:.2f} | "
                  f"{r['prefiltered_ms']:.2f} | {speedup:.1f}x |")  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1K, 3K only")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 9000, 30000, 100000])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument(
        "--prefilter-max-n",
        type=int,
        default=9000,
        help="largest N of the pre-filter table (Soft-NMS is O(N^2)); 0 skips the table",
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: CPU time of this process (default; robust on a shared machine), wall: wall time",
    )
    parser.add_argument(
        "--tables",
        nargs="*",
        choices=["op", "prefilter"],
        default=["op", "prefilter"],
        help="op: HNMS vs NMS (hnms_speed.json, .png); prefilter: the pre-filter table "
        "(hnms_prefilter_speed.json)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="no timing: print hnms_speed.json's tables and redraw hnms_speed.png from it",
    )
    args = parser.parse_args()
    if args.report:
        with open(os.path.join(RESULTS, "hnms_speed.json")) as f:
            data = json.load(f)
        table = {name: {int(n): v for n, v in row.items()} for name, row in data["table"].items()}
        print_op_table(table, data["sizes"], data["clock"], data["threads"])
        plot_op_table(table, data["sizes"], data["clock"], os.path.join(RESULTS, "hnms_speed.png"))
        return
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sizes = [1000, 3000] if args.quick else args.sizes
    torch.set_num_threads(1)
    has_ext = hnms._ext.load() is not None
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    meta = {"threads": torch.get_num_threads(), "clock": args.clock}
    if has_ext and args.prefilter_max_n > 0 and "prefilter" in args.tables:
        pre_sizes = [n for n in sizes if n <= args.prefilter_max_n]
        prefilter = run_prefilter(pre_sizes, args.budget, clock)
        with open(os.path.join(RESULTS, f"hnms_prefilter_speed{suffix}.json"), "w") as f:
            json.dump({**meta, "sizes": pre_sizes, "table": prefilter}, f, indent=1)
    if "op" in args.tables:
        run_op_table(args, sizes, clock, has_ext, suffix, meta)


def run_op_table(args, sizes, clock, has_ext, suffix, meta):
    """HNMS vs torchvision / detectron2 NMS: tables, hnms_speed.json and the log-log plot."""
    table = {}
    for n in sizes:
        boxes, scores, levels = crowd(n)
        for name, fn in methods(has_ext).items():
            t, keep = timeit(
                lambda fn=fn, b=boxes, s=scores, lv=levels: fn(b, s, lv), args.budget, clock
            )
            table.setdefault(name, {})[n] = {"ms": t * 1e3, "ns_per_box": t * 1e9 / n,
                                             "kept": int(len(keep))}  # fmt: skip
            print(f"N={n:>6}  {name:<40} {t * 1e3:10.3f} ms  {t * 1e9 / n:9.1f} ns/box  "
                  f"kept {len(keep)}", flush=True)  # fmt: skip
    print_op_table(table, sizes, args.clock, torch.get_num_threads())
    with open(os.path.join(RESULTS, f"hnms_speed{suffix}.json"), "w") as f:
        json.dump({**meta, "sizes": sizes, "table": table}, f, indent=1)
    plot_op_table(table, sizes, args.clock, os.path.join(RESULTS, f"hnms_speed{suffix}.png"))


def print_op_table(table, sizes, clock, threads):
    base = "torchvision nms@0.7"
    print(f"\nSpeed-up over {base} ({clock} time, {threads} torch thread)")
    header = "| method | " + " | ".join(f"N={n // 1000}K" for n in sizes) + " |"
    print(header + "\n|" + "---|" * (len(sizes) + 1))
    for name, row in table.items():
        cells = [f"{table[base][n]['ms'] / row[n]['ms']:.1f}x" for n in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| method | " + " | ".join(f"N={n // 1000}K ms (ns/box)" for n in sizes) + " |")
    print("|" + "---|" * (len(sizes) + 1))
    for name, row in table.items():
        cells = [f"{row[n]['ms']:.2f} ({row[n]['ns_per_box']:.0f})" for n in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


def plot_op_table(table, sizes, clock, path):
    """Log-log plot of time against N, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, row in table.items():
        ax.loglog(sizes, [row[n]["ms"] for n in sizes], marker="o", label=name)
    ax.set_xlabel("number of boxes N")
    ax.set_ylabel(f"{clock} time (ms, single thread)")
    ax.set_title("HNMS vs NMS on RPN-like crowded boxes (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
