"""Load a local Hugging Face checkpoint into muxd's compact forward.

A model is a local directory (config.json, safetensors, tokenizer files) or
a repo id already in the local Hugging Face cache; nothing is downloaded
(``HF_HUB_OFFLINE=1``), so a missing model is an immediate, clear error.
Weights are read tensor by tensor and fused into muxd's layout
(``q|k|v -> qkv_proj``, ``gate|up -> gate_up_proj``), or, from the second
load of a checkpoint at a CPU plan on, mapped from the prepared weights the
first one saved (``models.prepared``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muxd.engine import kernel_plan
from muxd.engine.executor import on_own_thread
from muxd.engine.kernel_plan import KernelPlan
from muxd.engine.model import Transformer, can_pack, pack_linears, rope_tables
from muxd.engine.q8 import Q8Linear, q8_shells, quantize_q8
from muxd.errors import ModelLoadError
from muxd.models import prepared
from muxd.models.quantize import BLOCK_LINEARS, QUANTIZATIONS, quant_state_tensors, quantize_linears, unique_bytes
from muxd.models.spec import ModelSpec
from muxd.models.synthetic import is_random, random_hf_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    path: Path
    spec: ModelSpec
    model: Transformer
    dtype: torch.dtype
    device: torch.device
    plan: KernelPlan
    prepared: bool = False  # read from a prepared-weights file (``models.prepared``)

    @property
    def weight_bytes(self) -> int:
        """Bytes the weights take in memory (parameters, packed weights and the
        scales of quantized layers, each storage once)."""
        return unique_bytes([*self.model.parameters(), *self.model.buffers(), *quant_state_tensors(self.model)])

    @property
    def step_read_bytes(self) -> int:
        """Bytes one decode step must read: every weight but the embedding table,
        which a step only indexes (unless it is also the output layer)."""
        embed = self.model.embed_tokens.weight
        if getattr(self.model.lm_head, "weight", None) is embed:
            return self.weight_bytes
        return self.weight_bytes - embed.numel() * embed.element_size()


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local directory, or a repo id found in the local Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model directory?")
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; give the model's directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:
        raise ModelLoadError(
            f"model {str(name_or_path)!r} is neither a local directory nor in the local Hugging Face cache "
            "(muxd never downloads; give a path to a model directory)"
        ) from None


def load_hf_config(path: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def eos_token_ids(path: Path, hf_config: Any) -> tuple[int, ...]:
    """EOS ids from generation_config.json, falling back to config.json."""
    eos = None
    gen = path / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
    return _config_eos(hf_config) if eos is None else _as_ids(eos)


def _config_eos(hf_config: Any) -> tuple[int, ...]:
    return _as_ids(getattr(hf_config, "eos_token_id", None))


def _as_ids(eos: Any) -> tuple[int, ...]:
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    *,
    pack: bool = True,
    quantization: str = "none",
    prepared_dir: Path | None = None,
    use_prepared: bool = True,
) -> LoadedModel:
    """Load a checkpoint; ``pack`` pre-packs CPU linears for oneDNN (see ``PackedLinear``);
    ``quantization`` "q8" swaps every linear for muxd's CPU int8 kernel (see
    ``engine.q8``); "int8", "nf4", "fp4" swap the block linears for
    bitsandbytes layers (see ``quantize_linears``).

    ``use_prepared``: on a CPU plan, fused (and q8-quantized) weights saved by
    an earlier load are read from ``prepared_dir`` (default
    ``cache_dir()/prepared``), or saved there for the next load
    (``models.prepared``); the model is the same either way.

    The work runs on a short-lived thread with the caller's intra-op thread
    count (``executor.on_own_thread``): loading is parallel torch work, and
    the OpenMP team it would leave on the caller's thread slows every
    two-thread decode matmul of an engine in the same process.

    ``random:NAME`` (``models.synthetic``) makes a random-weight model of a
    preset shape on ``device`` instead of reading a checkpoint.
    """
    if is_random(name_or_path):
        hf_model = on_own_thread(lambda: random_hf_model(str(name_or_path), parse_dtype(dtype), device))
        return from_hf_model(hf_model, str(name_or_path), dtype, device, pack=pack, quantization=quantization)
    prepare = (dtype, device, pack, quantization, prepared_dir, use_prepared)
    return on_own_thread(lambda: _load_model(name_or_path, *prepare))


def _plan(dtype: str | torch.dtype, device: str, quantization: str) -> KernelPlan:
    """``kernel_plan.plan`` for the arguments as given (checked here)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    return kernel_plan.plan(device, str(parse_dtype(dtype)).removeprefix("torch."), quantization)


def _load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype,
    device: str,
    pack: bool,
    quantization: str,
    prepared_dir: Path | None,
    use_prepared: bool,
) -> LoadedModel:
    plan = _plan(dtype, device, quantization)
    path = resolve_model_path(name_or_path)
    hf_config = load_hf_config(path)
    try:
        spec = ModelSpec.from_hf_config(hf_config, eos_token_ids(path, hf_config))
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    file = prepared.locate(path, plan, prepared_dir) if use_prepared else None
    if file is not None and (model := _from_prepared(file, spec, plan)) is not None:
        return _finish(path, hf_config, spec, model, plan, device, pack, from_prepared=True)
    model = _prepare(path, spec, _read_safetensors(path), plan, device)
    if file is not None:
        prepared.write(file, _prepared_tensors(model, spec))
    return _finish(path, hf_config, spec, model, plan, device, pack)


def from_hf_model(
    hf_model: Any,
    name: str,
    dtype: str | torch.dtype,
    device: str = "cpu",
    *,
    pack: bool = True,
    quantization: str = "none",
) -> LoadedModel:
    """muxd's model holding the weights of a transformers model already in memory
    (a random-weight twin, ``models.synthetic``); ``path`` is ``Path(name)``.

    Unfused tensors (embedding, o/down projections, norms) are shared with
    ``hf_model``, not copied; the fused q|k|v and gate|up are new tensors.
    """
    plan = _plan(dtype, device, quantization)
    config = hf_model.config
    try:
        spec = ModelSpec.from_hf_config(config, _config_eos(config))
    except ValueError as e:
        raise ModelLoadError(f"{name}: {e}") from None
    state = dict(hf_model.state_dict())
    name_path = Path(name)
    return on_own_thread(
        lambda: _finish(name_path, config, spec, _prepare(name_path, spec, state, plan, device), plan, device, pack)
    )


def _skeleton(spec: ModelSpec, has_bias: Callable[[str], bool]) -> Transformer:
    """A ``Transformer`` of ``spec`` on the meta device (no random init: tensors are
    assigned to it); ``has_bias(name)``: whether layer 0's ``name`` linear has a bias."""
    with torch.device("meta"):
        return Transformer(spec, qkv_bias=has_bias("q"), o_bias=has_bias("o"), mlp_bias=has_bias("gate"))


def _prepare(path: Path, spec: ModelSpec, state: dict[str, torch.Tensor], plan: KernelPlan, device: str) -> Transformer:
    """muxd's ``Transformer`` of ``spec`` from a transformers-layout ``state``, on
    ``device``, fused and quantized as ``plan`` says (not yet packed, tied or given RoPE)."""
    torch_dtype, quantization = DTYPES[plan.dtype], plan.quantization
    layer0 = "model.layers.0."
    parts = {"q": "self_attn.q_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj"}
    model = _skeleton(spec, lambda p: f"{layer0}{parts[p]}.bias" in state)
    model.load_state_dict(_to_muxd_layout(state, spec), strict=True, assign=True)
    if quantization == "none":
        model = model.to(device=device, dtype=torch_dtype)
    elif quantization == "q8":
        if torch.device(device).type != "cpu":
            raise ModelLoadError(f"{path}: quantization q8 is a CPU kernel; on {device} use int8, nf4 or fp4")
        model = quantize_q8(model.to(dtype=torch_dtype), BLOCK_LINEARS + ("lm_head",))
    else:  # quantized from a CPU copy, so the device never holds the full-precision weights
        model = quantize_linears(model.to(device="cpu", dtype=torch_dtype), quantization, torch_dtype, device).to(device)
    return model


def _prepared_tensors(model: Transformer, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """What a prepared file holds: ``model``'s state, a tied full-precision
    lm_head left out (it is the embedding, which safetensors holds once)."""
    state = model.state_dict()
    if spec.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        state.pop("lm_head.weight")
    return state


def _from_prepared(file: prepared.PreparedFile, spec: ModelSpec, plan: KernelPlan) -> Transformer | None:
    """The model ``_prepare`` makes at ``plan``, its tensors read from ``file``;
    None where the file is missing, stale, or not that model's tensors (names,
    shapes, dtypes: checked before any is used)."""
    tensors = prepared.read(file)
    if tensors is None:
        return None
    q8 = plan.quantization == "q8"
    parts = {"q": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_up_proj"}
    model = _skeleton(spec, lambda p: f"layers.0.{parts[p]}.{'bias_f32' if q8 else 'bias'}" in tensors)
    model = model.to(dtype=DTYPES[plan.dtype])
    if q8:
        model = q8_shells(model, BLOCK_LINEARS + ("lm_head",))
    if spec.tie_word_embeddings and not q8 and "embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["embed_tokens.weight"]
    expected = {name: (t.shape, t.dtype) for name, t in model.state_dict().items()}
    found = {name: (t.shape, t.dtype) for name, t in tensors.items()}
    if found != expected:
        log.warning("%s: not this model's tensors; preparing again", file.path)
        return None
    model.load_state_dict(tensors, strict=True, assign=True)
    for layer in model.modules():
        if isinstance(layer, Q8Linear):
            layer.refresh()
    return model


def _finish(
    path: Path,
    hf_config: Any,
    spec: ModelSpec,
    model: Transformer,
    plan: KernelPlan,
    device: str,
    pack: bool,
    from_prepared: bool = False,
) -> LoadedModel:
    """The prepared ``model`` made ready to serve: eval mode, tied head, RoPE tables, packed linears."""
    torch_dtype = DTYPES[plan.dtype]
    model = model.eval().requires_grad_(False)
    if spec.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        # One tensor for both, held once: pack_linears leaves a tied head on it
        # (``TiedLinear``), a bitsandbytes plan leaves the head unquantized, and
        # a q8 head is a quantized layer of its own (counted in weight_bytes).
        model.lm_head.weight = model.embed_tokens.weight
    model.set_rope(*rope_tables(hf_config, spec, torch_dtype, device))
    if pack and can_pack(torch.device(device), torch_dtype):
        pack_linears(model)
    if torch.device(device).type == "cuda":
        # Loading ran on this thread's stream; the executor's streams read the
        # weights next and do not wait for work queued on another stream.
        torch.cuda.synchronize(device)
    log.info("%s: kernel plan %s%s", path.name, plan.describe(), ", prepared weights" if from_prepared else "")
    return LoadedModel(path, spec, model, torch_dtype, torch.device(device), plan, from_prepared)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device="cpu"))
    return state


def _to_muxd_layout(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Rename and fuse Hugging Face weights into ``Transformer``'s parameters."""
    out = {
        "embed_tokens.weight": state["model.embed_tokens.weight"],
        "norm.weight": state["model.norm.weight"],
        "lm_head.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"]),
    }
    for i in range(spec.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [state.get(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            if qkv[0] is not None:
                out[f"{dst}self_attn.qkv_proj.{kind}"] = torch.cat(qkv, dim=0)
            gate_up = [state.get(f"{src}mlp.{p}_proj.{kind}") for p in ("gate", "up")]
            if gate_up[0] is not None:
                out[f"{dst}mlp.gate_up_proj.{kind}"] = torch.cat(gate_up, dim=0)
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                if f"{src}{name}.{kind}" in state:
                    out[f"{dst}{name}.{kind}"] = state[f"{src}{name}.{kind}"]
        for name in ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"):
            if f"{src}{name}.weight" in state:
                out[f"{dst}{name}.weight"] = state[f"{src}{name}.weight"]
    return out
