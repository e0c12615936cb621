"""Numeric precision of the sandwich step, decided in one place (as Detectron2's AMPTrainer).

With SOLVER.AMP.ENABLED the forward passes of every cohort member run under autocast: float16 with
one GradScaler per iteration on CUDA (each member's loss scaled, gradients unscaled once before
the gradient norm and clipping, one optimizer step that GradScaler skips on inf/NaN, one scaler
update), bfloat16 without a scaler on CPU (bfloat16 has float32's exponent range), or bfloat16
on CUDA too with MUTUALNET.TRAIN.AMP_DTYPE bfloat16. Without it,
float32. The trainer asks this object what to do and never which precision is on.
"""
import contextlib
import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)


class StepPrecision:
    """How one training step runs its forwards, backwards and optimizer step."""

    def __init__(self, device_type: str, dtype: Optional[torch.dtype] = None, use_grad_scaler: bool = False):
        self.device_type, self.dtype = device_type, dtype
        self.grad_scaler = torch.amp.GradScaler(device_type) if use_grad_scaler else None

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")

    def autocast(self):
        """Context for a member's forward pass and loss (not its backward)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def unscale_(self, optimizer) -> None:
        """Bring accumulated gradients to their true scale (once per step, before clipping)."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.grad_scaler is None:
            optimizer.step()
            return
        self.grad_scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
        self.grad_scaler.update()

    def state_dict(self) -> dict:
        return {} if self.grad_scaler is None else {"grad_scaler": self.grad_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])


def step_precision(amp_enabled: bool, device: torch.device, amp_dtype: str = "") -> StepPrecision:
    """float32 unless `amp_enabled`; then `amp_dtype` (MUTUALNET.TRAIN.AMP_DTYPE), by default
    float16 + GradScaler on CUDA and bfloat16 on CPU. bfloat16 never needs a scaler; float16 on
    CPU is refused (its autocast there is slow and unscaled)."""
    device_type = torch.device(device).type
    if not amp_enabled:
        return StepPrecision(device_type)
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"SOLVER.AMP.ENABLED=True on device {device_type!r}: supported on cuda (float16) "
                         "and cpu (bfloat16); set SOLVER.AMP.ENABLED False")
    dtype = amp_dtype or ("float16" if device_type == "cuda" else "bfloat16")
    if dtype == "float16":
        if device_type != "cuda":
            raise ValueError("MUTUALNET.TRAIN.AMP_DTYPE float16 needs CUDA; on the CPU use bfloat16 (or leave it empty)")
        return StepPrecision("cuda", torch.float16, use_grad_scaler=True)
    if device_type == "cpu" and not cpu_has_fast_bfloat16():
        logger.warning("SOLVER.AMP.ENABLED: this CPU has no native bfloat16 convolutions (oneDNN needs "
                       "AVX-512, best with BF16, or AMX; CPU capability here: %s), so bfloat16 training runs much "
                       "slower than float32 here (measured 40x for one convolution on an AVX2 CPU)",
                       torch.backends.cpu.get_cpu_capability())
    return StepPrecision(device_type, torch.bfloat16)


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (else ATen emulates them)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
