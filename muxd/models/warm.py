"""Warm a standby unit process: import what loading these models will need, without loading any weight.

Reading the models' Hugging Face configs pulls in transformers and their
config classes: about 3 s of imports on a small CPU, which is most of a tiny
unit's start-up. A warm spare does it ahead of time, so that replacing a
dead unit costs only loading its weights.
"""

from __future__ import annotations

from muxd.config import UnitConfig


def warm_up(config: UnitConfig) -> None:
    from muxd.models.loader import eos_token_ids, load_hf_config, resolve_model_path

    for model in config.models:
        if not model.preload or model.path.endswith(".gguf"):
            continue  # loaded on demand, or converted first: nothing to warm
        path = resolve_model_path(model.path)
        eos_token_ids(path, load_hf_config(path))
