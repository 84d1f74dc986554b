"""Quantized and full-precision copies of one checkpoint, side by side in one daemon."""

import shutil

import pytest

from tests.e2e.conftest import short_tmp_dir, start_daemon

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def daemon(smollm2_dir):
    tmp = short_tmp_dir()
    d = start_daemon(
        None, tmp, "--socket", str(tmp / "q.sock"), "--device", "cpu", "--kv-cache-mb", "32",
        "--model", f"smol={smollm2_dir},dtype=bfloat16",
        "--model", f"smol-int8={smollm2_dir},quantization=int8",
        "--model", f"smol-nf4={smollm2_dir},quantization=nf4,dtype=bfloat16",
    )  # fmt: skip
    yield d
    assert d.stop() == 0, d.log()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("model", ["smol", "smol-int8", "smol-nf4"])
def test_each_copy_names_paris(daemon, model):
    with daemon.http(timeout=120) as http:
        reply = http.post(
            "/v1/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
        )
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"], (reply.json(), daemon.log()[-3000:])


def test_status_reports_the_real_weight_bytes(daemon):
    status = daemon.get("/muxd/v1/status").json()
    models = {m["name"]: m for m in status["models"]}
    assert models["smol-nf4"]["quantization"] == "nf4"
    full, int8, nf4 = (models[n]["weight_bytes"] for n in ("smol", "smol-int8", "smol-nf4"))
    assert nf4 < int8 < full * 1.05  # int8 keeps fp32 outside the linears; bf16 is half of fp32
