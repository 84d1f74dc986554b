"""``muxd bench engine``: muxd's engine against transformers on the same prompts.

For each batch size the same token ids (fixed real-text prompts, cut to one
length) go through three engines:

- muxd's ``LLMEngine`` (paged KV pool, continuous batching, fused forward);
- transformers' ``generate`` (greedy, one padded batch);
- transformers' continuous batching ``generate_batch`` (paged cache, FIFO).

The engines are warmed up, then timed in turns for ``repeats`` rounds; each
engine's fastest run counts. Every engine generates exactly ``max_tokens``
tokens per prompt (EOS is ignored), so ``tok/s = generated tokens / wall
seconds of the whole generate`` (prefill included) compares like with like.
Beside the throughputs the report places muxd's median decode step against
the roofline of this machine: one step must read every weight once, so it
cannot beat ``step_read_bytes / measured read bandwidth``. The bandwidth is
probed right before and right after each timed muxd run (the better of the
two counts for that run), because on a shared machine it moves from minute
to minute: on a 2-vCPU cloud VM, ``torch.sum`` read 31-35 GB/s while the two
vCPUs shared one core complex (a cache-line round trip of ~75 ns between
them) and 45-56 GB/s while they sat on two (~340 ns), for spells of seconds
to minutes. The highest figure any probe of the bench saw is reported too,
with the step against it (``step_vs_roofline_peak``). A quantized run
quantizes both sides the same way (bitsandbytes on the block linears); a
``q8`` run has no transformers twin and is compared with transformers in the
same dtype unquantized, so its token match is also its accuracy.

``device`` "cuda" runs both sides on the GPU (the roofline then uses the
GPU's measured read bandwidth). A ``random:NAME`` model
(``models.synthetic``) is made on the device with random weights, and its
transformers twin holds the same tensors; a quantized random model is
compared with its unquantized twin, as ``q8`` is.

``baselines=False`` times muxd alone (no transformers twin is kept or
run): the GPU check's runs, which need the step against its roofline and
muxd's greedy tokens (``output_digests``, one hash per row, to compare the
Triton/graph path with the eager one across runs), not the baselines.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muxd.bench.bandwidth import measure_read_bandwidth

DEFAULT_BATCHES = (1, 16)
DEFAULT_PROMPT_TOKENS = 64
DEFAULT_MAX_TOKENS = 64
DEFAULT_REPEATS = 2
WARMUP_TOKENS = 4
PAGE_TOKENS = 16
ADJACENT_PROBE_TRIALS = 7  # a probe around each muxd run: best of 7 sums (~0.1 s on a CPU)
MAX_BATCH_TOKENS = 512  # prefill token budget per step, the same for muxd and transformers' CB

# Real text, so attention sees realistic token statistics; row i of a batch
# starts at paragraph i, so the rows differ.
PARAGRAPHS = (
    "The city of Paris sits on the river Seine in the north of France. It has been the capital "
    "of the country for most of the last thousand years, and its museums, bridges and cafes draw "
    "visitors from every part of the world.",
    "A language model reads a sequence of tokens and predicts the next one. Serving such a model "
    "means running two kinds of work: prefill, which reads the whole prompt at once, and decode, "
    "which adds one token at a time to every sequence in the batch.",
    "The sea was calm that morning. Small boats left the harbour before sunrise, and by noon the "
    "fishermen were back on the quay, sorting their catch while gulls circled overhead and the "
    "market slowly filled with people.",
    "Water boils at one hundred degrees Celsius at sea level, but on a high mountain it boils at a "
    "lower temperature, because the air pressure is lower. This is why cooking takes longer in the "
    "mountains than it does by the coast.",
    "Once upon a time, a small grey cat lived in a library. It slept between the shelves during the "
    "day, and at night it walked along the rows of books, as if it were reading the titles one by one.",
)


@dataclass(frozen=True)
class Timing:
    """One engine's timed run: tokens generated and the wall time of the whole generate."""

    tokens: int
    seconds: float
    output_ids: list[list[int]]
    step_times: dict[str, list[float]] = field(default_factory=dict)  # muxd only: seconds per step kind
    bandwidth_gb_s: float | None = None  # muxd only: read bandwidth probed around this run, the better of two

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def bench_prompts(encode, batch: int, prompt_tokens: int) -> list[list[int]]:
    """``batch`` prompts of exactly ``prompt_tokens`` ids each, from the fixed paragraphs."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    prompts = []
    for row in range(batch):
        ids: list[int] = []
        i = row
        while len(ids) < prompt_tokens:
            ids += encode(PARAGRAPHS[i % len(PARAGRAPHS)] + " ")
            i += 1
        prompts.append(ids[:prompt_tokens])
    return prompts


def run_engine_bench(
    model_path: str | Path,
    batches: tuple[int, ...] | list[int] = DEFAULT_BATCHES,
    prompt_len: int = DEFAULT_PROMPT_TOKENS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    dtype: str = "float32",
    quantization: str | None = None,
    repeats: int = DEFAULT_REPEATS,
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
    baselines: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark ``model_path`` at each batch size; one result dict per batch size.

    ``progress`` receives one line per phase (for a CLI spinner); ``baselines``
    False leaves transformers out (its columns are then None).
    """
    import torch

    from muxd.engine.executor import on_own_thread
    from muxd.models.factory import build_tokenizer
    from muxd.models.loader import from_hf_model, load_model, parse_dtype
    from muxd.models.synthetic import is_random, random_hf_model
    from muxd.models.tokenizer import Tokenizer, load_tokenizer

    quantization = None if quantization in (None, "none") else quantization
    if prompt_len < 1 or max_tokens < 1 or repeats < 1:
        raise ValueError(
            f"prompt tokens, max tokens and repeats must be >= 1, got {prompt_len}, {max_tokens}, {repeats}"
        )
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batches)}")
    say = progress or (lambda _msg: None)
    torch_dtype = parse_dtype(dtype)

    with _quiet_transformers():
        say("measuring memory read bandwidth")
        probes = [on_own_thread(lambda: measure_read_bandwidth(device=device))]  # every probe of the bench
        say(f"loading {model_path}")
        hf_model = None
        if is_random(model_path):
            hf_model = on_own_thread(lambda: random_hf_model(str(model_path), torch_dtype, device))
            loaded = from_hf_model(hf_model, str(model_path), torch_dtype, device, quantization=quantization or "none")
            tokenizer = Tokenizer(build_tokenizer())
            if not baselines:
                hf_model = None  # its unfused tensors live on in muxd's model; the rest goes
        else:
            loaded = load_model(model_path, torch_dtype, device, quantization=quantization or "none")
            tokenizer = load_tokenizer(loaded.path)
            # the baseline in what muxd's plan runs (a bf16 asked for may run as fp32 here)
            hf_quantization = None if loaded.plan.quantization == "none" else loaded.plan.quantization
            if baselines:
                hf_model = on_own_thread(lambda: _load_hf(loaded.path, loaded.dtype, hf_quantization, device))
        timed = {}
        for batch in batches:
            prompts = bench_prompts(tokenizer.encode, batch, prompt_len)
            runners = {"muxd": _muxd_runner(loaded, prompts, max_tokens, probes)}
            if baselines:
                runners["hf_generate"] = _hf_generate_runner(hf_model, prompts)
                runners["hf_cb"] = _hf_cb_runner(hf_model, prompts, max_tokens)
            timed[batch] = _time_interleaved(
                runners, max_tokens, repeats, lambda phase, b=batch: say(f"batch {b}: {phase}")
            )  # (fastest timing per engine, errors of the baselines left out)
        say("measuring memory read bandwidth again")
        probes.append(on_own_thread(lambda: measure_read_bandwidth(device=device)))
    return [
        _result_row(loaded, batch, prompt_len, max_tokens, repeats, best, errors, max(probes), loaded.plan.quantization)
        for batch, (best, errors) in timed.items()
    ]


def _time_interleaved(
    runners: dict[str, contextlib.AbstractContextManager], max_tokens: int, repeats: int, say: Callable[[str], None]
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Warm every engine up, then time them in turns, ``repeats`` rounds; the fastest run of each counts.

    Taking turns spreads a burst of other work on a shared machine over all
    engines instead of charging it to whichever ran during it. A baseline
    that fails to start or warm up (transformers' APIs move between
    versions) is left out, its error returned beside the timings; muxd's
    failure is raised.
    """
    errors: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        runs = {}
        for name, runner in runners.items():
            say(f"warming up {name}")
            try:
                runs[name] = stack.enter_context(runner)
                runs[name](WARMUP_TOKENS)
            except Exception as e:
                if name == "muxd":
                    raise
                runs.pop(name, None)
                errors[name] = f"{type(e).__name__}: {e}"
        timings: dict[str, list[Timing]] = {name: [] for name in runs}
        for round_ in range(repeats):
            for name, run in runs.items():
                say(f"timing {name} ({round_ + 1}/{repeats})")
                timings[name].append(run(max_tokens))
    return {name: min(ts, key=lambda t: t.seconds) for name, ts in timings.items()}, errors


def _result_row(
    loaded, batch, prompt_len, max_tokens, repeats, best, errors, peak_bandwidth, quantization
) -> dict[str, Any]:
    """One batch size's figures; the roofline is the best muxd run's own (its probes), the peak is the bench's."""
    import torch

    from muxd.engine import cpu_isa

    muxd, hf_gen, hf_cb = best["muxd"], best.get("hf_generate"), best.get("hf_cb")
    decode_s = muxd.step_times["decode"]  # empty when max_tokens == 1
    decode_ms = statistics.median(decode_s) * 1e3 if decode_s else None
    bandwidth = muxd.bandwidth_gb_s
    roofline_ms = loaded.step_read_bytes / (bandwidth * 1e9) * 1e3
    peak_roofline_ms = loaded.step_read_bytes / (peak_bandwidth * 1e9) * 1e3
    return {
        "model": loaded.path.name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "quantization": None if quantization == "none" else quantization,
        "plan": loaded.plan.label,
        "plan_notes": list(loaded.plan.reasons),
        "cpu": cpu_isa.describe(),
        "batch": batch,
        "prompt_tokens": prompt_len,
        "max_tokens": max_tokens,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "muxd_tok_s": round(muxd.tok_s, 2),
        "hf_generate_tok_s": hf_gen and round(hf_gen.tok_s, 2),
        "hf_cb_tok_s": hf_cb and round(hf_cb.tok_s, 2),
        "ratio_vs_hf_cb": hf_cb and round(muxd.tok_s / hf_cb.tok_s, 3),
        "ratio_vs_hf_generate": hf_gen and round(muxd.tok_s / hf_gen.tok_s, 3),
        "decode_step_ms": _round(decode_ms),
        "prefill_ms": round(sum(muxd.step_times["prefill"]) * 1e3, 3),
        "roofline_step_ms": round(roofline_ms, 6),
        "step_vs_roofline": _round(decode_ms and decode_ms / roofline_ms),
        "bandwidth_gb_s": round(bandwidth, 2),
        "bandwidth_peak_gb_s": round(peak_bandwidth, 2),
        "step_vs_roofline_peak": _round(decode_ms and decode_ms / peak_roofline_ms),
        "weight_bytes": loaded.weight_bytes,
        "step_read_bytes": loaded.step_read_bytes,
        "tokens_match_hf_generate": hf_gen and _match_fraction(muxd.output_ids, hf_gen.output_ids),
        "output_digests": [token_digest(ids) for ids in muxd.output_ids],
        "errors": errors,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and the CB manager's per-call warnings, then restore them."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(n) for n in ("transformers", "ContinuousBatchingLogger")]
    levels = [lg.level for lg in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_hf(path: Path, dtype, quantization: str | None, device: str = "cpu") -> Any:
    """transformers' model, quantized as muxd's is: bitsandbytes on the block linears, head and embedding kept."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if quantization not in (None, "q8"):
        from transformers import BitsAndBytesConfig

        if quantization == "int8":
            from muxd.models.quantize import INT8_THRESHOLD

            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quantization,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
        kwargs = {"quantization_config": config, "device_map": device}
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **kwargs).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


Runner = Callable[[int], Timing]  # run(max_tokens) -> one timed generation of the whole batch


@contextlib.contextmanager
def _muxd_runner(loaded, prompts: list[list[int]], max_tokens: int, probes: list[float]) -> Iterator[Runner]:
    """``LLMEngine.generate`` on one engine reused across runs; a timing carries that run's step
    seconds and the read bandwidth probed just before and just after it (each probe also goes to ``probes``)."""
    from muxd.core.sequence import SamplingParams
    from muxd.engine.executor import on_own_thread
    from muxd.engine.llm_engine import LLMEngine
    from muxd.sched.base import SchedulerConfig

    spec = loaded.spec
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * loaded.dtype.itemsize
    tokens = len(prompts) * (len(prompts[0]) + max_tokens + 2 * PAGE_TOKENS)
    engine = LLMEngine(
        {"bench": loaded},
        kv_cache_bytes=max(64 << 20, 2 * tokens * per_token),
        page_tokens=PAGE_TOKENS,
        scheduler_config=SchedulerConfig(max_batch_seqs=max(64, len(prompts)), max_prefill_tokens=MAX_BATCH_TOKENS),
        prefix_caching=False,  # every run repeats the same prompts: measure the engine, not the cache
    )

    device = str(loaded.device)

    def probe() -> float:
        probes.append(on_own_thread(lambda: measure_read_bandwidth(trials=ADJACENT_PROBE_TRIALS, device=device)))
        return probes[-1]

    def run(n: int) -> Timing:
        engine.stats.step_times = {"prefill": [], "decode": []}
        before = probe()
        t0 = time.perf_counter()
        outs = engine.generate("bench", prompts, SamplingParams(max_tokens=n, ignore_eos=True))
        seconds = time.perf_counter() - t0
        bandwidth = max(before, probe())
        ids = [o.output_ids for o in outs]
        return Timing(sum(map(len, ids)), seconds, ids, engine.stats.step_times, bandwidth)

    with engine:
        yield run


@contextlib.contextmanager
def _hf_generate_runner(model, prompts: list[list[int]]) -> Iterator[Runner]:
    """Greedy ``generate`` on one batch (equal-length prompts: left padding is a no-op),
    each run on its own thread (see ``_hf_cb_runner``)."""
    import torch
    from transformers import GenerationConfig

    from muxd.engine.executor import on_own_thread

    input_ids = torch.tensor(prompts, dtype=torch.int64, device=model.device)  # [B, T]
    mask = torch.ones_like(input_ids)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0

    def run(n: int) -> Timing:
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            if out.is_cuda:  # the last step may still be queued
                torch.cuda.synchronize(out.device)
        seconds = time.perf_counter() - t0
        new = out[:, input_ids.shape[1] :].tolist()
        return Timing(sum(map(len, new)), seconds, new)

    yield lambda n: on_own_thread(lambda: run(n))


@contextlib.contextmanager
def _hf_cb_runner(model, prompts: list[list[int]], max_tokens: int) -> Iterator[Runner]:
    """``generate_batch``, each run on a manager built and warmed up untimed, on its own thread."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from muxd.engine.executor import on_own_thread

    pages_per_seq = -(-(len(prompts[0]) + max_tokens) // PAGE_TOKENS) + 1
    # Newer transformers names the page size ``page_size`` (``block_size``
    # still works, with a deprecation warning); older 5.x (5.17) knows only ``block_size``.
    size_key = "page_size" if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters else "block_size"
    cb_config = ContinuousBatchingConfig(
        **{size_key: PAGE_TOKENS},
        num_blocks=len(prompts) * pages_per_seq + 8,
        max_batch_tokens=MAX_BATCH_TOKENS,
    )
    # eos_token_id=None: the manager disables EOS, so every request runs to max_new_tokens.
    gen_config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=None)

    def run(n: int) -> Timing:
        # Build and warm the manager untimed, time a run on it, then stop it:
        # a manager left running keeps its thread's OpenMP team alive, which
        # would slow muxd's next run (see muxd.engine.executor.on_own_thread).
        model.generate_batch(prompts, gen_config, cb_config, persistent_manager=True, max_new_tokens=1)
        t0 = time.perf_counter()
        out = model.generate_batch(prompts, gen_config, cb_config, persistent_manager=True, max_new_tokens=n)
        seconds = time.perf_counter() - t0
        model.destroy_cached_continuous_batching_manager()
        ids = [list(r.generated_tokens) for r in out.values()]
        return Timing(sum(map(len, ids)), seconds, ids)

    try:
        yield lambda n: on_own_thread(lambda: run(n))
    finally:
        model.destroy_cached_continuous_batching_manager()


def token_digest(ids: list[int]) -> str:
    """A short hash of one row's generated token ids: rows of two runs compare without carrying the ids."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _match_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of rows whose greedy tokens agree exactly (a parity check, not a speed figure)."""
    return round(sum(x == y for x, y in zip(a, b)) / max(len(a), 1), 3)
