"""Load test of the served student: N concurrent clients for T seconds through Ray Serve, and the same
workload against the bare transformers engine in this process, in the same run (short phases
alternate between the two, so that other load on the machine hits both alike).

Reports errors (must be zero), p50/p99 latency and throughput for both, and the Serve/bare throughput
ratio (goal: >= 0.9). Not a timed test: absolute numbers depend on the machine; the ratio is the point.

    python bench/serve_load.py --clients 8 --seconds 40 --rounds 4
    python bench/serve_load.py --model runs/x/train/student --adapter tuned=runs/x/train/adapter

Without ``--model`` it builds the CI-sized world student (random weights) into a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def drive(call: Callable[[int], Awaitable[Any]], clients: int, seconds: float) -> dict[str, Any]:
    """Run ``clients`` loops calling ``call`` back to back for ``seconds``; collect latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call(worker * 1_000_000 + i)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                latencies.append(time.perf_counter() - t0)
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(clients)))
    wall = time.perf_counter() - start
    return {
        "latencies": latencies,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "wall_s": wall,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the phases of one side: totals, latency percentiles over all requests, throughput."""
    latencies = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall_s"] for r in runs)
    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "first_errors": [e for r in runs for e in r["first_errors"]][:3],
        "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else float("nan"),
        "per_round_rps": [r["throughput_rps"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="student folder (default: build the CI world student)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH of a LoRA adapter to serve too")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each phase")
    parser.add_argument("--rounds", type=int, default=4, help="alternating bare/served phases (seconds split across them)")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine (both phases)")
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    from edray.serve import job
    from edray.serve.client import ClientConfig, ModelClient, user_message
    from edray.serve.config import ServeConfig
    from edray.serve.engine import ChatRequest
    from edray.serve.transformers_engine import TransformersEngine

    tmp = Path(tempfile.mkdtemp(prefix="edray-serve-load-"))
    model_dir = args.model
    if model_dir is None:
        from edray.world.student import StudentConfig, build_student, world_texts

        model_dir = build_student(tmp / "student", StudentConfig.ci(), world_texts(500))
    adapters = dict(a.split("=", 1) for a in args.adapter)

    from PIL import Image
    import io

    def image(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, format="PNG")
        return buf.getvalue()

    images = [image(i) for i in range(16)]
    question = "What color is the shape?"

    engine = TransformersEngine("student", str(model_dir), adapters, torch_threads=args.threads)

    async def bare_call(i: int) -> None:
        req = ChatRequest(
            model="student",
            messages=[{"role": "user", "content": "<image>" + question}],
            images=[images[i % 16]],
            max_tokens=args.max_tokens,
        )
        await engine.generate(req)

    key_env = "EDRAY_BENCH_API_KEY"
    os.environ[key_env] = secrets.token_urlsafe(24)
    # A private local Ray: never attach to another Ray running on the machine.
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServeConfig.model_validate(
        {
            "port": port,
            "api_key_env": key_env,
            "models": [
                {
                    "name": "student",
                    "path": str(model_dir),
                    "adapters": [{"name": n, "path": p} for n, p in adapters.items()],
                    "num_cpus": 1,
                    "torch_threads": args.threads,
                    "max_ongoing_requests": max(32, 2 * args.clients),
                }
            ],
        }
    )
    t0 = time.perf_counter()
    app = job.start(config)
    startup = time.perf_counter() - t0
    client = ModelClient(
        ClientConfig(
            base_url=app.base_url, model="student", api_key_env=key_env, max_concurrency=args.clients, max_retries=0, timeout_s=60
        )
    )

    async def served_call(i: int) -> None:
        await client.chat([user_message(question, [images[i % 16]])], max_tokens=args.max_tokens, use_cache=False)

    async def served_phase(seconds: float) -> dict[str, Any]:
        await served_call(0)  # warm the connection pool
        out = await drive(served_call, args.clients, seconds)
        await client.aclose()
        return out

    # Alternate short phases so that load from anything else on the machine hits both sides alike.
    phase = args.seconds / args.rounds
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "served": []}
    for r in range(args.rounds):
        runs["bare"].append(asyncio.run(drive(bare_call, args.clients, phase)))
        runs["served"].append(asyncio.run(served_phase(phase)))
        print(f"round {r}: bare {runs['bare'][-1]['throughput_rps']} rps, served {runs['served'][-1]['throughput_rps']} rps", flush=True)
    job.stop()
    ray.shutdown()
    bare, served = merge(runs["bare"]), merge(runs["served"])
    ratio = served["throughput_rps"] / bare["throughput_rps"] if bare["throughput_rps"] else float("nan")
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "torch_threads": args.threads,
        "serve_startup_s": round(startup, 1),
        "bare": bare,
        "served": served,
        "throughput_ratio_served_over_bare": round(ratio, 3),
        "p50_overhead_ms": round(served["p50_ms"] - bare["p50_ms"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
