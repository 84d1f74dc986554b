"""``placement = "auto"``: the daemon's units come from a plan of this machine, and serve through the SDK."""

from __future__ import annotations

import os
import shutil

import httpx
import openai
import pytest

from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config

pytestmark = pytest.mark.skipif(os.environ.get("MUXD_TEST_DEVICE", "cpu") != "cpu",
                                reason="muxd ships profiles of CPUs only: a GPU's plan needs its own")


def test_auto_placement_serves_every_model_from_the_plan_and_logs_why(tiny_models):
    tmp = short_tmp_dir()
    config = tiny_config(tiny_models, tmp / "muxd.sock").replace('device = "cpu"', 'device = "cpu"\nplacement = "auto"')
    config = config.replace("[[models]]", '[[models]]\nquantization = "q8"')  # the precision muxd's profiles ship at
    daemon = start_daemon(config, tmp)
    try:
        status = daemon.get("/muxd/v1/status").json()
        assert status["placement"] == "auto"
        (unit,) = status["units"]
        assert sorted(unit["models"]) == ["tiny-llama", "tiny-qwen3"]
        http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
        with openai.OpenAI(base_url="http://localhost/v1", api_key="-", http_client=http, max_retries=0) as client:
            for model in ("tiny-llama", "tiny-qwen3"):
                reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=4, temperature=0)
                assert reply.usage.completion_tokens == 4
        log = daemon.log()
        assert "shares the CPU with" in log and "(the only device)" in log
    finally:
        assert daemon.stop() == 0, daemon.log()
        shutil.rmtree(tmp, ignore_errors=True)
