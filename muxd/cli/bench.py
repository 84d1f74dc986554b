"""``muxd bench ...``: benchmarks as commands, a table for people and one JSON line for machines.

Heavy imports (torch, transformers, the bench code) happen inside command
bodies, so registering this sub-app costs ``muxd --help`` nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from muxd.cli.common import exit_with
from muxd.errors import MuxdError

app = typer.Typer(help="Measure muxd against the engines people use today.", no_args_is_help=True)

__all__ = ["app"]


def parse_batches(values: list[str]) -> list[int]:
    """``["1,16", "4"] -> [1, 16, 4]``: ``--batch`` is repeatable and takes comma lists (repeats dropped)."""
    batches = []
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--batch {item!r} is not a positive integer")
        if int(item) not in batches:
            batches.append(int(item))
    if not batches:
        raise ValueError("--batch needs at least one batch size, e.g. --batch 1,16")
    return batches


@app.command()
def engine(
    model: Annotated[
        Path | None,
        typer.Option(help="Model directory (default: the SmolLM2-135M-Instruct demo model), or random:NAME "
                     "(e.g. random:llama-3.2-1b) for random weights made on the device."),
    ] = None,
    batch: Annotated[list[str] | None, typer.Option(help="Batch size; repeat or give a comma list.")] = None,
    dtype: Annotated[str, typer.Option(help="Weight dtype: float32, bfloat16 or float16.")] = "float32",
    quantization: Annotated[
        str, typer.Option(help="none, q8 (CPU int8 kernel), int8, nf4 or fp4 (bitsandbytes, for muxd and transformers alike).")
    ] = "none",
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length in tokens.")] = 64,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per prompt.")] = 64,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per engine; the fastest counts.")] = 2,
    device: Annotated[str, typer.Option(help="Device of both engines: cpu or cuda.")] = "cpu",
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Also time transformers (--no-baselines: muxd alone).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the results as one JSON line, last.")] = False,
) -> None:
    """muxd's engine vs transformers' generate and continuous batching, on the same prompts."""
    from rich.console import Console

    from muxd.bench.engine import run_engine_bench

    try:
        batches = parse_batches(batch or ["1,16"])
    except ValueError as e:
        exit_with(str(e))
    status_console = Console(stderr=True)
    try:
        with status_console.status("preparing") as status:
            say = lambda msg: status.update(msg)  # noqa: E731
            path = model if model is not None else _demo_model(say)
            results = run_engine_bench(
                path, batches, prompt_tokens, max_tokens, dtype, quantization, repeats=repeats, progress=say,
                device=device, baselines=baselines,
            )
    except (MuxdError, ValueError) as e:
        exit_with(getattr(e, "message", None) or str(e))
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: no terminal width to respect, keep the rows whole
        console.width = max(console.width, 120)
    console.print(results_table(results))
    if as_json:
        typer.echo(json.dumps(results))


@app.command()
def constrained(
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the SmolLM2-135M-Instruct demo model).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Sequences in the batch.")] = 16,
    quantization: Annotated[str, typer.Option(help="auto (the CPU demo's), none or q8.")] = "auto",
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length in tokens.")] = 64,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per sequence.")] = 64,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds of the three runs; each run's best counts.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the result as one JSON line, last.")] = False,
) -> None:
    """The decode step with every sequence JSON-constrained, against the same batch free (and half/half)."""
    from rich.console import Console

    from muxd.bench.constrained import results_table as constrained_table
    from muxd.bench.constrained import run_constrained_bench

    try:
        with Console(stderr=True).status("preparing") as status:
            say = lambda msg: status.update(msg)  # noqa: E731
            path = model if model is not None else _demo_model(say)
            result = run_constrained_bench(path, batch, prompt_tokens, max_tokens, quantization, repeats=repeats, progress=say)
    except (MuxdError, ValueError) as e:
        exit_with(getattr(e, "message", None) or str(e))
    Console().print(constrained_table(result))
    if as_json:
        typer.echo(json.dumps(result))


def _demo_model(say) -> Path:
    from muxd.models.smollm2 import ensure_smollm2

    return ensure_smollm2(progress=say)


def results_table(results: list[dict[str, Any]]):
    """One row per batch size: throughputs, the ratios, and the decode step against its roofline."""
    from rich import box
    from rich.table import Table

    first = results[0]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"{first['model']} {first['dtype']}{' ' + first['quantization'] if first['quantization'] else ''}"
            f"{' on ' + first['device'] if first.get('device', 'cpu') != 'cpu' else ''}: "
            f"{first['prompt_tokens']} prompt + {first['max_tokens']} new tokens, plan {first['plan']}"
            f"{' on ' + first['cpu']['model'] if first.get('device', 'cpu') == 'cpu' else ''}"
        ),
        caption=(
            f"tok/s = generated tokens / wall time of the whole generate, best of {first['repeats']}; roofline = "
            f"{first['step_read_bytes'] / 1e6:.0f} MB read per step / the read bandwidth probed around that run "
            f"(GB/s); the bench's highest probe: {first['bandwidth_peak_gb_s']} GB/s"
        ),
    )
    columns = [  # two-line headers keep the table within 80 columns
        ("batch", "batch", "{}"),
        ("muxd\ntok/s", "muxd_tok_s", "{:.1f}"),
        ("HF gen\ntok/s", "hf_generate_tok_s", "{:.1f}"),
        ("HF CB\ntok/s", "hf_cb_tok_s", "{:.1f}"),
        ("vs\nCB", "ratio_vs_hf_cb", "{:.2f}x"),
        ("vs\ngen", "ratio_vs_hf_generate", "{:.2f}x"),
        ("step\nms", "decode_step_ms", "{:.1f}"),
        ("GB/s", "bandwidth_gb_s", "{:.0f}"),
        ("roofline\nms", "roofline_step_ms", "{:.2f}"),
        ("step /\nroofline", "step_vs_roofline", "{:.2f}"),
        ("prefill\nms", "prefill_ms", "{:.0f}"),
    ]
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    for row in results:
        table.add_row(*("-" if row[key] is None else fmt.format(row[key]) for _, key, fmt in columns))
    return table


from muxd.cli.bench_mux import register as register_mux  # noqa: E402  (needs `app` above)

register_mux(app)
