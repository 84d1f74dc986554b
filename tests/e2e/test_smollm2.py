"""``muxd serve`` with no configuration (the demo default) answers with the real SmolLM2.

The snippets of ``README.md`` run here verbatim, so the documentation
cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import short_tmp_dir, start_daemon

DOCS = Path(__file__).parents[2] / "README.md"
SNIPPET = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
pytestmark = pytest.mark.slow


def snippets() -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["lang"], m["code"]) for m in SNIPPET.finditer(DOCS.read_text())}


@pytest.fixture(scope="module")
def demo(smollm2_dir):
    """The demo default, exactly as `muxd serve` starts it, in throwaway XDG directories."""
    tmp = short_tmp_dir()
    models = tmp / "cache" / "muxd" / "models"
    models.mkdir(parents=True)
    (models / smollm2_dir.name).symlink_to(smollm2_dir)  # the tiny demo models are built on start
    env = {
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    d = start_daemon(None, tmp, env=env)
    yield d
    assert d.stop() == 0, d.log()
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_demo_default_serves_smollm2_and_two_tiny_models_in_one_unit(demo):
    status = demo.get("/muxd/v1/status").json()
    assert status["placement"] == "demo" and [u["name"] for u in status["units"]] == ["cpu0"]
    assert status["units"][0]["models"] == ["smollm2", "tiny-llama", "tiny-qwen3"]


def test_smollm2_knows_the_capital_of_france(demo):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(demo.socket)))
    with openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32, temperature=0,
        )  # fmt: skip
    assert "Paris" in reply.choices[0].message.content


def test_the_docs_have_the_snippets_this_module_runs():
    assert set(snippets()) == {"curl-models", "curl-chat", "curl-stream", "openai-sdk", "openai-parse", "muxd-client",
                                "muxd-run"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(snippets()))
def test_docs_snippet_runs_verbatim(demo, name):
    lang, code = snippets()[name]
    if "curl" in code and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(cmd, capture_output=True, text=True, env=demo.env, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = "smollm2" if name == "curl-models" else "Paris"
    assert expected in result.stdout, result.stdout
