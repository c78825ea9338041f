"""Accelerators' peak FLOP rates, for model FLOPs utilisation (MFU).

MFU is the model's counted FLOPs per second over the accelerator's peak for the precision the
matrix products run in. The peaks are the vendors' datasheet figures for dense tensors (no
2:4 sparsity), per GPU:

| GPU (``torch.cuda.get_device_name``) | bf16 TFLOP/s | fp32 TFLOP/s |
|---|---:|---:|
| H200 (SXM), H100 SXM ("H100 80GB HBM3") | 989.4 | 66.9 |
| H200 NVL, H100 NVL | 835.5 | 60.0 |
| H100 PCIe | 756.5 | 51.2 |
| A100 (SXM and PCIe) | 312.0 | 19.5 |
| L40S | 362.1 | 91.6 |
| L4 | 121.0 | 30.3 |

fp32 is the plain (non-tensor-core) rate: torch runs float32 matrix products without TF32
unless ``torch.backends.cuda.matmul.allow_tf32`` is set. Any other device has no entry; a
caller passes its own peak instead.
"""

from __future__ import annotations

# (name fragment, bf16 peak, fp32 peak) in FLOP/s; the longest fragment found in the device's
# name wins ("H100 NVL" before "H100", "L40S" before "L4")
PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200 NVL", 835.5e12, 60.0e12),
    ("H200", 989.4e12, 66.9e12),
    ("H100 NVL", 835.5e12, 60.0e12),
    ("H100 PCIe", 756.5e12, 51.2e12),
    ("H100", 989.4e12, 66.9e12),
    ("A100", 312.0e12, 19.5e12),
    ("L40S", 362.1e12, 91.6e12),
    ("L4", 121.0e12, 30.3e12),
)

BF16 = ("bf16", "bf16-mixed", "bf16-true")
FP32 = ("fp32", "32", "32-true")


def peak_flops(device_name: str, precision: str) -> float | None:
    """The datasheet peak in FLOP/s of ``device_name`` at ``precision`` (``bf16``/``bf16-mixed``
    or ``fp32``/``32``), or None where the table has no entry (CPUs, other GPUs or
    precisions)."""
    if precision in BF16:
        column = 1
    elif precision in FP32:
        column = 2
    else:
        return None
    found = [row for row in PEAKS if row[0].lower() in device_name.lower()]
    if not found:
        return None
    return max(found, key=lambda row: len(row[0]))[column]
