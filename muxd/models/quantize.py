"""Quantized weights: muxd's own CPU int8 (``q8``) and, through bitsandbytes,
int8 (LLM.int8()) and 4-bit (NF4, FP4).

``q8`` (``engine/q8.py``) is the fast one on a CPU: int8 weights with a
scale per row, streamed at memory bandwidth by a small C kernel, on every
linear including ``lm_head`` (SmolLM2's tied head is a fifth of its bytes).
The bitsandbytes kinds follow below.

``quantize_linears`` swaps the linears of every transformer block (``qkv_proj``,
``o_proj``, ``gate_up_proj``, ``down_proj``) for bitsandbytes layers. The
embedding table and ``lm_head`` stay in the model's dtype, as transformers'
``BitsAndBytesConfig`` leaves them by default: they are a small share of a
large model's weights and the most sensitive to rounding (a tied head is the
embedding itself).

The layers are standard bitsandbytes ones, built from a weight that still
lies on the CPU and quantized by bitsandbytes' own ``.to(device)``, which is
how it quantizes on CUDA as on the CPU: a GPU never holds the full-precision
copy. bitsandbytes is imported here, lazily: it costs seconds, and only a
quantized model needs it.
"""

from __future__ import annotations

import logging
import sys
import warnings

import torch
from torch import nn

from muxd.errors import ModelLoadError

QUANTIZATIONS = ("none", "auto", "q8", "int8", "nf4", "fp4")
BNB_QUANTIZATIONS = ("int8", "nf4", "fp4")
BLOCK_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

# LLM.int8()'s outlier threshold (transformers' default too): activation columns
# holding a value above it are multiplied in 16-bit, the rest in int8. On
# SmolLM2-135M, 0 (all int8) changes the first greedy token of "What is the
# capital of France?"; 6.0 keeps fp32's tokens, for 10-20 % longer decode
# steps on the CPU (the outlier columns' weights are dequantized per call).
INT8_THRESHOLD = 6.0
# 4-bit: quantize the block absmax too (QLoRA's double quantization; transformers
# leaves it off by default): 4.13 bits a weight instead of 4.5, so 4-bit weights
# are the 1/8 of fp32 they promise. bitsandbytes' CPU kernel expands the absmax
# to bf16 when it repacks (4.25 bits).
DOUBLE_QUANT = True


def quantize_linears(
    model: nn.Module,
    kind: str,
    compute_dtype: torch.dtype,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Replace each transformer block's linears of ``model`` by bitsandbytes
    layers quantized on ``device`` (in place; returns ``model``).

    ``kind`` is ``"int8"`` (``Linear8bitLt``, int8 weights with a scale per
    output row) or ``"nf4"`` / ``"fp4"`` (``Linear4bit``, 4-bit codes with an
    absmax per block of 64, computing in ``compute_dtype``).
    The linears must still hold their full-precision weights on the CPU;
    everything else of ``model`` is left where it is.
    """
    if kind not in BNB_QUANTIZATIONS:
        raise ValueError(f"unknown bitsandbytes quantization {kind!r}; use one of {', '.join(BNB_QUANTIZATIONS)}")
    bnb = import_bitsandbytes()
    device = torch.device(device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in BLOCK_LINEARS and type(child) is nn.Linear:
                if child.weight.device.type != "cpu":
                    raise ValueError(f"{name}: quantize from CPU weights (bitsandbytes quantizes as it moves them)")
                setattr(parent, name, _quantized(bnb, child, kind, compute_dtype, device))
    return model


def _quantized(bnb, linear: nn.Linear, kind: str, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s weight, quantized on ``device``."""
    shape = (linear.in_features, linear.out_features, linear.bias is not None)
    weight = linear.weight.detach()
    with torch.device("meta"):  # no random init: the weight is assigned below
        if kind == "int8":
            layer = bnb.nn.Linear8bitLt(*shape, has_fp16_weights=False, threshold=INT8_THRESHOLD)
        else:
            layer = bnb.nn.Linear4bit(*shape, compute_dtype=compute_dtype, quant_type=kind)
    if kind == "int8":
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type=kind, compress_statistics=DOUBLE_QUANT, module=layer
        )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    layer = layer.to(device).eval()  # bitsandbytes quantizes here
    if kind != "int8" and device.type == "cpu":
        _repack_4bit_for_cpu(layer)
    return layer


def _repack_4bit_for_cpu(layer: nn.Module) -> None:
    """Run one forward now: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit
    weights (and expands the absmax to bf16) for its fused kernel on the first
    forward. Doing it at load time makes the weight bytes final before they are
    reported, spares the first request, and keeps the repacked tensors out of
    the runner's inference mode."""
    with torch.no_grad():
        layer(torch.zeros(1, layer.in_features, dtype=layer.compute_dtype))


def import_bitsandbytes():
    """bitsandbytes with its noise off: the import's warning about the optional
    ``kernels`` package (bitsandbytes falls back to its own CPU kernel), the
    deprecation warnings of the torch modules it pulls in, the int8 matmul's
    warning on every call that it casts inputs to fp16, and, where ``kernels``
    is installed, its warning that offline (``HF_HUB_OFFLINE``) it cannot check
    the publisher of the hub kernel bitsandbytes asks it for."""
    for name in ("bitsandbytes", "kernels"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:  # a level set on purpose is left alone
            log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
            import bitsandbytes
    except ImportError as e:
        raise ModelLoadError(
            f"quantized models need bitsandbytes ({e}); install it with: pip install bitsandbytes"
        ) from None
    return bitsandbytes


def quant_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``model``'s bitsandbytes layers that are neither parameters
    nor buffers: int8 row scales, 4-bit block absmax (and its own quantization
    state when double-quantized). Empty, without importing bitsandbytes, when
    no such layer can exist."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return []
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            scb = module.state.SCB if module.state.SCB is not None else module.weight.SCB
            tensors += [scb] if scb is not None else []
        elif isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
            state = module.weight.quant_state
            tensors += [state.absmax, state.code]
            if state.nested:
                tensors += [state.offset, state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def unique_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of ``tensors``, each tensor counted once (layers share 4-bit code
    tables). By object, not storage: oneDNN's packed weights have no storage."""
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())
