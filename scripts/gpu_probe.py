"""What the CUDA side of muxd stands on, measured through its own executor.

Prints the torch/CUDA versions and the GPU, then times a fixed amount of
bf16 matrix work as executor jobs of several compute shares: alone (does a
share's green context really hold it to its SMs?) and two half shares at
once (do two jobs' green contexts use different SMs, or the same ones?).
Each job times itself, from its first kernel to its stream's end, so each
of two jobs at once has its own speed, compared with the same job alone
(``two_halves_vs_solo``: near 1 where the halves are disjoint, near 0.5
where they share one half). The same on plain streams, which share every
SM. On green contexts, also a CUDA graph of the same products, captured
outside any share and replayed by a 1/10 job on its stream: does a
replay keep to the launching stream's SMs (as the decode graphs need) or
to those it was captured on? One JSON line at the end. Run by
``scripts/gpu-check``; ``--device cpu`` only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from muxd.core.job import Job, JobKind, JobResult
from muxd.engine.executor import Executor

LEVELS = 10  # the engine's CUDA_SHARE_LEVELS
HALF = LEVELS // 2
TRIALS = 2  # each figure: the best of two runs


def matmul_job(a: torch.Tensor, b: torch.Tensor, repeats: int, seconds: dict[int, float]):
    """An executor run function: ``repeats`` products on the job's stream, timed by the job itself
    (into ``seconds[job_id]``) up to the end of its stream's work."""

    def run(job: Job) -> JobResult:
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.current_stream().synchronize()
        seconds[job.job_id] = time.perf_counter() - t0
        return JobResult(job)

    return run


def graph_job(graph: torch.cuda.CUDAGraph, seconds: dict[int, float]):
    """An executor run function replaying ``graph`` on the job's stream, timed as ``matmul_job``'s."""

    def run(job: Job) -> JobResult:
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.current_stream().synchronize()
        seconds[job.job_id] = time.perf_counter() - t0
        return JobResult(job)

    return run


def captured(a: torch.Tensor, b: torch.Tensor, repeats: int) -> torch.cuda.CUDAGraph:
    """``repeats`` products captured as one graph, outside any executor stream."""
    torch.mm(a, b)  # cuBLAS settles its workspace before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            torch.mm(a, b)
    torch.cuda.synchronize()
    return graph


class Shares:
    """TFLOP/s of jobs of given share levels on one executor, alone or several at once."""

    def __init__(self, executor: Executor, run, seconds: dict[int, float], flop: int) -> None:
        self.executor, self.run, self.seconds, self.flop = executor, run, seconds, flop
        self.next_id = 0

    def at_once(self, levels: list[int], run=None) -> list[float]:
        """Each job's TFLOP/s, one job per level submitted together: the trial (of ``TRIALS``, after one
        untimed round that makes the levels' streams) whose slowest job was fastest."""
        best = [0.0] * len(levels)
        for trial in range(TRIALS + 1):
            ids = []
            for level in levels:
                self.next_id += 1
                ids.append(self.next_id)
                job = Job(JobKind.PREFILL, f"m{len(ids)}", [], job_id=self.next_id, slots=level)
                self.executor.submit(job, run or self.run)
            left = len(ids)
            while left:
                left -= len(self.executor.wait())
            tflops = [self.flop / self.seconds[i] / 1e12 for i in ids]
            if trial and min(tflops) > min(best):
                best = tflops
        return best

    def report(self, alone_levels: tuple[int, ...]) -> dict:
        """Alone at each level, then two half shares at once, each against its speed alone."""
        alone = {level: self.at_once([level])[0] for level in alone_levels}
        for level, tflops in alone.items():
            print(f"  share {level}/{LEVELS} alone: {tflops:.2f} TFLOP/s", flush=True)
        halves = self.at_once([HALF, HALF])
        vs_solo = [round(x / alone[HALF], 3) for x in halves]
        print(f"  two half shares at once: {', '.join(f'{x:.2f}' for x in halves)} TFLOP/s, each / alone: {vs_solo}",
              flush=True)  # fmt: skip
        return {
            "compute": self.executor.compute.model_dump(mode="json"),  # the executor's account of its shares
            "green_sms_by_share": self.executor.green_sms(),
            "tflops_alone_by_share": {level: round(x, 2) for level, x in alone.items()},
            "tflops_two_halves": [round(x, 2) for x in halves],
            "tflops_two_halves_together": round(sum(halves), 2),
            "two_halves_vs_solo": vs_solo,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        from muxd.nvml import Nvml

        props = torch.cuda.get_device_properties(device)
        report |= {
            "gpu": props.name, "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "driver": Nvml().driver_version(),
        }  # fmt: skip
    print(json.dumps(report), flush=True)

    n = args.size
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    if device.type == "cuda":  # made on this thread's stream; the jobs' streams read them
        torch.cuda.synchronize(device)
    seconds: dict[int, float] = {}
    run = matmul_job(a, b, args.repeats, seconds)
    flop = 2 * n**3 * args.repeats
    for key, green, levels in (("green_contexts", True, (1, 2, HALF, 9, LEVELS)), ("plain_streams", False, (HALF,))):
        print(f"{key}:", flush=True)
        executor = Executor(LEVELS, device, green_contexts=green)
        try:
            shares = Shares(executor, run, seconds, flop)
            report[key] = shares.report(levels)
            if green and device.type == "cuda":
                replayed = shares.at_once([1], graph_job(captured(a, b, args.repeats), seconds))[0]
                report[key]["graph_tflops_on_share_1"] = round(replayed, 2)
                print(f"  a graph replayed by a 1/{LEVELS} job: {replayed:.2f} TFLOP/s (eager at 1/{LEVELS}: "
                      f"{report[key]['tflops_alone_by_share'][1]}, whole GPU: "
                      f"{report[key]['tflops_alone_by_share'][LEVELS]})", flush=True)  # fmt: skip
        finally:
            executor.shutdown()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
