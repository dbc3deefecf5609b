"""Benchmark: how fast the skills world's supporting pool is generated, and how much memory it takes.

Two measurements, both printed as JSON:

1. ``inprocess``: rows/s of :func:`edray.world.pool.generate_support_rows` in one process, against
   the bare library cost in the same run (PIL drawing + PNG encoding of the same scenes, nothing
   else). The ratio is what to compare across machines.
2. ``job`` (with ``--job-rows N``): ``edray world generate`` for N rows under ``/usr/bin/time -v``,
   wall time, rows/s, the peak RSS of the largest process (from ``time -v``) and the peak total RSS
   of the whole process tree (driver, Ray daemons and workers; sampled every 0.5 s).

Usage::

    python bench/world_pool.py --rows 5000
    python bench/world_pool.py --rows 5000 --job-rows 2000000 --out /tmp/world-2m
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def bench_inprocess(rows: int) -> dict[str, float]:
    from PIL import Image, ImageDraw

    from edray.world.config import SceneConfig
    from edray.world.pool import generate_support_rows
    from edray.world.scene import sample_scene

    generate_support_rows(0, 0, 50)  # warm imports
    t0 = time.perf_counter()
    generate_support_rows(0, 0, rows)
    world_s = time.perf_counter() - t0

    cfg = SceneConfig()
    rng = random.Random(0)
    scenes = [sample_scene(rng, cfg) for _ in range(rows)]
    t0 = time.perf_counter()
    for scene in scenes:
        img = Image.new("RGB", (scene.image_size, scene.image_size))
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            draw.rectangle((o.col * 16 + 1, o.row * 16 + 1, o.col * 16 + 14, o.row * 16 + 14), fill=(200, 40, 40))
        img.save(io.BytesIO(), format="PNG")
    bare_s = time.perf_counter() - t0
    return {
        "rows": rows,
        "world_rows_per_s": round(rows / world_s, 1),
        "bare_pil_png_rows_per_s": round(rows / bare_s, 1),
        "world_over_bare_time": round(world_s / bare_s, 2),
    }


def bench_job(rows: int, out: Path) -> dict[str, float | int]:
    import psutil

    if out.exists():
        shutil.rmtree(out)
    edray = Path(sys.executable).with_name("edray")
    cmd = ["/usr/bin/time", "-v", str(edray), "world", "generate", "--out", str(out), "--pool-size", str(rows)]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak_tree = max(peak_tree, total)
            except psutil.Error:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"edray world generate failed:\n{err[-4000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    manifest = json.loads((out / "manifest.json").read_text())
    pool_bytes = sum(f.stat().st_size for f in (out / "pool").glob("*.parquet"))
    return {
        "rows": rows,
        "wall_s": round(wall, 1),
        "pool_write_s": manifest["metrics"]["pool_seconds"],
        "pool_rows_per_s": manifest["metrics"]["pool_rows_per_s"],
        "max_rss_largest_process_mib": round(int(m.group(1)) / 1024, 1) if m else -1,
        "peak_tree_rss_mib": round(peak_tree / 2**20, 1),
        "pool_parquet_mib": round(pool_bytes / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000, help="rows for the in-process measurement")
    ap.add_argument("--job-rows", type=int, default=0, help="rows for the Ray Data job (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("bench-world"), help="world folder for the job")
    args = ap.parse_args()
    result: dict[str, object] = {"inprocess": bench_inprocess(args.rows)}
    if args.job_rows:
        result["job"] = bench_job(args.job_rows, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
