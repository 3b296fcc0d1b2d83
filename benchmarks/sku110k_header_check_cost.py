"""Cost of checking SKU-110K's stated image sizes against the image headers at load time.

Writes ``--num-images`` JPEGs (``--size`` W x H, default 64 x 48, a few with an EXIF orientation
tag) and an SKU-110K csv with ``--boxes`` rows per image into a temporary directory, then times
``d2kit.data.load_sku110k_csv`` with ``check_image_sizes=True`` (PIL opens each file and reads
its header and EXIF block; no pixel is decoded) and ``False`` (only ``os.path.isfile``). The
files were just written, so they are in the page cache: this is the warm-cache cost; on a cold
network file system the open itself dominates. Prints the median of ``--repeats`` runs, per image.

    python benchmarks/sku110k_header_check_cost.py                      # 300 small images
    python benchmarks/sku110k_header_check_cost.py --size 2448 3264 --num-images 50
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from d2kit.data import load_sku110k_csv


def write_dataset(root: str, num_images: int, size: tuple[int, int], boxes: int) -> str:
    width, height = size
    os.makedirs(os.path.join(root, "images"))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    rows = []
    for i in range(num_images):
        name = f"train_{i}.jpg"
        exif = Image.Exif()
        if i % 10 == 0:
            exif[0x0112] = 1  # an EXIF block with the default orientation
        Image.fromarray(pixels).save(os.path.join(root, "images", name), "JPEG", exif=exif)
        for _ in range(boxes):
            x1, y1 = int(rng.uniform(0, width / 2)), int(rng.uniform(0, height / 2))
            rows.append(f"{name},{x1},{y1},{x1 + 8},{y1 + 8},object,{width},{height}")
    csv_file = os.path.join(root, "annotations_train.csv")
    with open(csv_file, "w") as f:
        f.write("\n".join(rows) + "\n")
    return csv_file


def time_load(csv_file: str, image_root: str, check: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_sku110k_csv(csv_file, image_root, check_image_sizes=check)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 48), metavar=("W", "H"))
    parser.add_argument("--boxes", type=int, default=5, help="csv rows per image")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        csv_file = write_dataset(root, args.num_images, tuple(args.size), args.boxes)
        image_root = os.path.join(root, "images")
        on = time_load(csv_file, image_root, True, args.repeats)
        off = time_load(csv_file, image_root, False, args.repeats)
    n = args.num_images
    print(f"{n} JPEGs of {args.size[0]}x{args.size[1]} px, {args.boxes} rows each, "
          f"median of {args.repeats} loads (warm page cache)")  # fmt: skip
    print(f"{'check_image_sizes':>18} | {'load (ms)':>9} | {'ms / image':>10}")
    for label, t in (("True (header)", on), ("False (isfile)", off)):
        print(f"{label:>18} | {t * 1e3:9.1f} | {t * 1e3 / n:10.3f}")
    extra = (on - off) / n
    print(f"header check: +{extra * 1e3:.3f} ms / image -> {extra * 11762:.1f} s for SKU-110K's "
          "11,762 images")  # fmt: skip


if __name__ == "__main__":
    main()
