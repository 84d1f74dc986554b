"""``muxd run``, ``ps``, ``stats`` against a live daemon; the client verbs load no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from muxd.cli.app import app


def muxd(daemon, *args: str, stdin: str | None = None, columns: int = 80):
    result = CliRunner().invoke(app, [*args, "--socket", str(daemon.socket)], input=stdin, env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_ps_shows_every_loaded_model_with_its_unit_state_and_until(tiny_daemon):
    out = muxd(tiny_daemon, "ps", columns=120)
    for name in ("tiny-llama", "tiny-qwen3"):
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert " cpu0 " in row and " loaded " in row and "MiB" in row and " forever " in row


def test_ps_shows_each_models_kernel_plan_on_a_wide_terminal(tiny_daemon):
    plans = {m["name"]: m["plan"] for m in tiny_daemon.get("/muxd/v1/status").json()["models"]}
    out = muxd(tiny_daemon, "ps", columns=120)
    for name, plan in plans.items():
        assert next(line for line in out.splitlines() if f" {name} " in line).rstrip().endswith(f" {plan}")


def test_stats_as_a_table_and_as_json(tiny_daemon):
    assert "tiny-llama" in muxd(tiny_daemon, "stats") and "PAGES FREE/TOTAL" in muxd(tiny_daemon, "stats").replace("\n", " ")
    doc = json.loads(muxd(tiny_daemon, "stats", "--json"))
    assert set(doc["models"]) == {"tiny-llama", "tiny-qwen3"} and doc["units"]["cpu0"]["pages_total"] > 0


def test_run_answers_a_prompt(tiny_daemon):
    out = muxd(tiny_daemon, "run", "tiny-llama", "What is the capital of France?", "--max-tokens", "5", "--temperature", "0")
    expected = CliRunner().invoke(app, ["run", "tiny-llama", "What is the capital of France?", "--max-tokens", "5",
                                        "--temperature", "0", "--socket", str(tiny_daemon.socket)]).stdout  # fmt: skip
    assert out == expected and out.endswith("\n") and out.strip()


def test_run_without_a_prompt_chats_one_line_at_a_time(tiny_daemon):
    out = muxd(tiny_daemon, "run", "tiny-qwen3", "--max-tokens", "3", "--temperature", "0", stdin="hello\nand then?\n/bye\nignored\n")
    assert len(out.strip("\n").split("\n")) >= 2  # two answers, nothing after /bye


def test_an_unknown_model_is_one_error_line(tiny_daemon):
    result = CliRunner().invoke(app, ["run", "nope", "hi", "--socket", str(tiny_daemon.socket)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: model 'nope' not found; served models: tiny-llama, tiny-qwen3"


def test_client_verbs_load_no_torch(tiny_daemon):
    for verb in (["ps"], ["stats"], ["run", "tiny-llama", "hi", "--max-tokens", "2"]):
        code = (
            "import sys\n"
            f"sys.argv = ['muxd', *{verb!r}, '--socket', {str(tiny_daemon.socket)!r}]\n"
            "from muxd.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(); print(' '.join(sys.modules))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        loaded = set(result.stdout.splitlines()[-1].split())
        assert "muxd.client" in loaded and not loaded & {"torch", "transformers"}, verb


def test_status_names_each_models_kernel_plan(tiny_daemon):
    """How each model runs here (weights / the CPU kernels' instruction set), as the unit decided at load."""
    from muxd.engine import cpu_isa

    plans = {m["name"]: m["plan"] for m in tiny_daemon.get("/muxd/v1/status").json()["models"]}
    assert set(plans) == {"tiny-llama", "tiny-qwen3"}
    kernels = {isa.name for isa in cpu_isa.runnable()} | {"torch"}
    assert all(plan.split("/")[1] in kernels for plan in plans.values()), plans
