"""What the CUDA side of muxd stands on, measured through its own executor.

Prints the torch/CUDA versions and the GPU, then times a fixed amount of
bf16 matrix work as executor jobs of several compute shares: alone (does a
share's green context really hold it to its SMs?) and two half shares at
once (do two jobs' green contexts use different SMs, or the same ones?).
One JSON line at the end. Run by ``scripts/gpu-check``; ``--device cpu``
only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from muxd.core.job import Job, JobKind, JobResult
from muxd.engine.executor import Executor

LEVELS = 10  # the engine's CUDA_SHARE_LEVELS


def matmul_job(a: torch.Tensor, b: torch.Tensor, repeats: int):
    """An executor run function: ``repeats`` products on the job's stream (the executor waits for them)."""

    def run(job: Job) -> JobResult:
        for _ in range(repeats):
            torch.mm(a, b)
        return JobResult(job)

    return run


def timed(executor: Executor, jobs: list[Job], run) -> float:
    """Wall seconds from submitting ``jobs`` until all have finished."""
    t0 = time.perf_counter()
    for job in jobs:
        executor.submit(job, run)
    left = len(jobs)
    while left:
        left -= len(executor.wait())
    return time.perf_counter() - t0


def two_halves(executor: Executor, run, flop: int) -> float:
    """TFLOP/s of two half-share jobs run at once (after one untimed pair that makes their streams)."""
    pair = lambda base: [Job(JobKind.PREFILL, f"m{i}", [], job_id=base + i, slots=LEVELS // 2) for i in range(2)]  # noqa: E731
    timed(executor, pair(200), run)
    return round(2 * flop / timed(executor, pair(300), run) / 1e12, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        from torch.cuda import green_contexts

        report |= {
            "gpu": props.name, "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "green_contexts": getattr(green_contexts, "SUPPORTED", None),
            "green_context_stream_api": hasattr(green_contexts.GreenContext, "Stream"),
        }  # fmt: skip
    print(json.dumps(report), flush=True)

    n = args.size
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    flop = 2 * n**3 * args.repeats
    executor = Executor(LEVELS, device)
    run = matmul_job(a, b, args.repeats)
    timed(executor, [Job(JobKind.PREFILL, "warm", [], job_id=0, slots=LEVELS)], run)
    alone = {}
    for i, level in enumerate((1, 2, 5, 9, 10), start=1):
        timed(executor, [Job(JobKind.PREFILL, "w", [], job_id=100 + i, slots=level)], run)  # makes its stream
        alone[level] = round(flop / timed(executor, [Job(JobKind.PREFILL, "m", [], job_id=i, slots=level)], run) / 1e12, 1)
        print(f"share {level}/{LEVELS} alone: {alone[level]} TFLOP/s", flush=True)
    together = two_halves(executor, run, flop)
    print(f"two half shares at once: {together} TFLOP/s together (one alone: {alone[5]})", flush=True)
    report |= {"tflops_alone_by_share": alone, "tflops_two_halves_together": together,
               "green_sms_by_share": executor.green_sms()}  # fmt: skip
    executor.shutdown()
    plain = Executor(LEVELS, device, green_contexts=False)
    report["tflops_two_halves_together_plain_streams"] = two_halves(plain, run, flop)
    print(f"two half shares at once, plain streams: {report['tflops_two_halves_together_plain_streams']} TFLOP/s")
    plain.shutdown()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
