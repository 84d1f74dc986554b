from __future__ import annotations

import pytest
import torch

from muxd.models.factory import FAMILIES, build_tiny_checkpoint


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """One tiny checkpoint per supported family, plus Mistral with a short sliding window."""
    root = tmp_path_factory.mktemp("families")
    dirs = {f: build_tiny_checkpoint(f, root / f, seed=i) for i, f in enumerate(FAMILIES)}
    dirs["mistral-window"] = build_tiny_checkpoint("mistral", root / "mistral-window", seed=7, sliding_window=8)
    return dirs


def hf_greedy(path, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy tokens (fp32), the reference for parity."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt):].tolist()
