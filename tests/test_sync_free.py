"""The training step never waits for the device: no host-device synchronisation.

On CUDA an op whose result size or value the host must know (``.item()``, ``bool(t)``,
``nonzero``, boolean indexing, ``unique``, ``bincount``, a copy to the CPU) stalls the queue of
kernels until the GPU catches up. Three checks: the model's forward and backward run on the
``meta`` device (which holds no data, so any such op fails there); a dispatch-level detector
fails on those ops during whole Lightning updates on CPU; and, where CUDA exists,
``torch.cuda.set_sync_debug_mode("error")`` around the forward and backward.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from helpers import FAST, compose_cfg, small_manifests
from torch.utils._python_dispatch import TorchDispatchMode
from typing_extensions import override

from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.train import build

# ops that make the host wait for the device on CUDA (or whose output size depends on data)
SYNCING = {
    "aten._local_scalar_dense",  # .item(), bool(), int(), float(), .tolist()
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique_dim",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.bincount",
    "aten.repeat_interleave",
    "aten.equal",
}


class HostSyncDetector(TorchDispatchMode):
    """Records every op that would synchronise on CUDA (boolean indexing included)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket._qualified_op_name.replace("::", ".")
        bool_index = name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool
            for t in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else [])
        )
        if name in SYNCING or bool_index:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def model_and_plan(device: str):
    cfg = preset("tiny")
    cfg.feature_encoder.feature_grad_mult = 0.1
    model = Wav2Vec2Model(cfg)
    frames = model.feature_encoder.output_lengths(torch.tensor([24_000, 24_000]))
    plan = model.draw_masks(frames, int(frames[0]))  # on the host, as the data loader does
    return model.to(device).train(), plan.to(device)


def test_forward_and_backward_need_no_data_on_the_host():
    """On the meta device tensors have shapes but no values: a forward and backward that
    completes there never reads a device value back."""
    model, plan = model_and_plan("meta")
    source = torch.empty(2, 24_000, device="meta")
    out = model(source, temperature=2.0, plan=plan)
    (out.loss.total / out.loss.num_masked).backward()
    assert out.logits.shape[:2] == plan.indices.shape
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())


def test_forward_and_backward_make_no_syncing_op():
    model, plan = model_and_plan("cpu")
    source = torch.randn(2, 24_000)
    with HostSyncDetector() as detector:
        out = model(source, temperature=2.0, plan=plan)
        (out.loss.total / out.loss.num_masked).backward()
    assert detector.found == []


def test_lightning_updates_make_no_syncing_op_between_logging_steps(tmp_path):
    """Whole updates through Lightning (data already on the device, loss scaling, the skip
    decision of fused AdamW, metric logging): no syncing op at updates that do not log."""
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={small_manifests(tmp_path, 12)}",
            "data.max_tokens=80000",
            "trainer.max_steps=6",
            "trainer.log_every_n_steps=5",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "codebook_image_every=0",
        ],
        tmp_path,
    )
    pl.seed_everything(cfg.seed)
    datamodule, module, trainer = build(cfg)
    found: dict[int, list[str]] = {}

    class Watch(pl.Callback):
        @override
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.detector = HostSyncDetector()
            self.detector.__enter__()

        @override
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.detector.__exit__(None, None, None)
            found[trainer.global_step - 1] = self.detector.found

    trainer.callbacks.append(Watch())
    trainer.fit(module, datamodule=datamodule)
    quiet = [step for step in found if (step + 1) % 5]  # updates that do not log
    assert quiet and all(found[step] == [] for step in quiet), found
    assert found[4]  # a logging update does read its metrics: the detector sees it


@pytest.mark.cuda
def test_cuda_forward_and_backward_under_sync_debug_mode_error():
    """The documented check: any synchronising call raises in this mode."""
    model, plan = model_and_plan("cuda")
    source = torch.randn(2, 24_000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(source, temperature=2.0, plan=plan)
        (out.loss.total / out.loss.num_masked).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(out.loss.total)


@pytest.mark.cuda
def test_cuda_forward_and_backward_equal_the_cpu_ones():
    """In fp32 the GPU computes what the CPU computes: the loss, and each parameter's gradient
    to a relative error (in norm) of 1e-3 (eval mode: no dropout, no Gumbel noise; TF32 off)."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    found = {}
    try:
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            model, plan = model_and_plan(device)
            model.eval()
            source = torch.randn(2, 24_000, generator=torch.Generator().manual_seed(1))
            out = model(source.to(device), temperature=2.0, plan=plan)
            (out.loss.total / out.loss.num_masked).backward()
            grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
            found[device] = (out.loss.total.detach().cpu(), grads)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = found["cpu"], found["cuda"]
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-4, atol=1e-5)
    assert cpu_grads.keys() == gpu_grads.keys() and cpu_grads
    far = {
        n: err
        for n, g in cpu_grads.items()
        if (err := float((gpu_grads[n] - g).norm() / g.norm().clamp_min(1e-12))) > 1e-3
    }
    assert far == {}, far


def test_bf16_autocast_matches_fp32_on_cpu():
    """The bf16 path a GPU run takes, exercised on CPU: the same loss within bf16's precision,
    similarities and loss terms in float32, finite gradients."""
    model, plan = model_and_plan("cpu")
    model.eval()  # no dropout: the two passes compute the same function
    source = torch.randn(2, 24_000)
    full = model(source, temperature=2.0, plan=plan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(source, temperature=2.0, plan=plan)
    assert half.logits.dtype == torch.float32 and half.loss.total.dtype == torch.float32
    per_frame = lambda out: (out.loss.total / out.loss.num_masked).item()  # noqa: E731
    assert abs(per_frame(half) - per_frame(full)) < 0.05 * abs(per_frame(full))
    (half.loss.total / half.loss.num_masked).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_mixed_training_run_on_cpu(tmp_path):
    from helpers import scalars

    from w2v2_pretrain.train import train

    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={small_manifests(tmp_path, 6)}",
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=3",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=1",
        ],
        tmp_path,
    )
    result = train(cfg)
    assert result.global_step == 3
    logged = scalars(tmp_path)
    for tag in ("train/loss", "train/grad_norm", "train/code_perplexity"):
        assert all(torch.isfinite(torch.tensor(v)) for _, v in logged[tag]), tag
    assert all(torch.isfinite(torch.tensor(v)) for v in result.val_metrics.values())
