"""HNMS CUDA kernel vs torchvision.ops.nms on CUDA (and the pure-torch reference on CUDA), on the
RPN-like crowded boxes of benchmarks/hnms_speed.py. Needs a GPU and hnms._C built with
FORCE_CUDA=1 (benchmarks/gpu/run_hnms_gpu.sh does both).

    python benchmarks/gpu/hnms_gpu_speed.py [--out benchmarks/results]
"""

import argparse
import json
import os
import statistics
import sys

import torch
import torchvision

import hnms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hnms_speed import crowd  # noqa: E402


def cuda_time(fn, reps: int = 30):
    """Median milliseconds of fn() measured with CUDA events (after 3 warm-up calls)."""
    for _ in range(3):
        out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 9000, 30000, 100000])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results"))
    args = parser.parse_args()
    if not (torch.cuda.is_available() and hnms._ext.has_cuda_kernels()):
        raise SystemExit("needs a GPU and hnms._C built with FORCE_CUDA=1")
    methods = {
        "torchvision nms@0.7": lambda b, s, lv: torchvision.ops.nms(b, s, 0.7),
        "torchvision batched_nms@0.7 (5 levels)": lambda b, s, lv: torchvision.ops.batched_nms(
            b, s, lv, 0.7
        ),
        "HNMS CUDA α=0.7 K=1": lambda b, s, lv: hnms.hnms(b, s, 0.7, 1, backend="ext"),
        "HNMS CUDA α=0.7 K=2": lambda b, s, lv: hnms.hnms(b, s, 0.7, 2, backend="ext"),
        "HNMS CUDA batched α=0.7 K=1": lambda b, s, lv: hnms.batched_hnms(b, s, lv, 0.7),
        "HNMS pure torch on CUDA α=0.7 K=1": lambda b, s, lv: hnms.hnms(b, s, 0.7, backend="torch"),
    }
    table = {}
    for n in args.sizes:
        boxes, scores, levels = (t.cuda() for t in crowd(n))
        cpu_keep = hnms.hnms(boxes.cpu(), scores.cpu(), 0.7, backend="ext")
        for name, fn in methods.items():
            ms, keep = cuda_time(lambda fn=fn, b=boxes, s=scores, lv=levels: fn(b, s, lv))
            table.setdefault(name, {})[n] = {"ms": ms, "kept": int(len(keep))}
            print(f"N={n:>6}  {name:<40} {ms:9.3f} ms  kept {len(keep)}", flush=True)
        gpu_keep = hnms.hnms(boxes, scores, 0.7, backend="ext").cpu()
        assert torch.equal(gpu_keep, cpu_keep), "CUDA and CPU kernels disagree"
    base = "torchvision nms@0.7"
    print(f"\n| method ({torch.cuda.get_device_name(0)}) | "
          + " | ".join(f"N={n // 1000}K ms (speed-up)" for n in args.sizes) + " |")  # fmt: skip
    print("|" + "---|" * (len(args.sizes) + 1))
    for name, row in table.items():
        ref = table[base]
        cells = [f"{row[n]['ms']:.3f} ({ref[n]['ms'] / row[n]['ms']:.1f}x)" for n in args.sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hnms_gpu_speed.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
