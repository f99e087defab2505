"""Where a run computes: device resolution and the autocast dtype that device does well."""

from __future__ import annotations

import warnings

import torch


class DeviceError(ValueError):
    """A device that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (a CPU without AVX512-BF16/AMX emulates it,
    measured 7x slower than fp32 on an AVX2 EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 where the hardware has it, else fp32. bf16 on a CUDA GPU without it falls back
    to fp16 (with a loss scaler); bf16 on a CPU that emulates it is kept, with a warning."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn("this CPU has no native bf16 (no AVX512-BF16/AMX): bf16 autocast is emulated and "
                      "much slower than fp32; use train.precision=auto or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16: using fp16 autocast with a gradient scaler")
        return torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
