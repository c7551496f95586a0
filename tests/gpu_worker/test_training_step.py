"""What one training step may and must touch, on the tiny model (no database)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from core.train_config import build_config
from gpu_worker.training.models import load_components
from gpu_worker.training.trainer import Hooks, Trainer, TrainingDiverged
from tests.helpers.training import photo_bytes

PROMPTS = ("a photo of sks dog", "a photo of dog")


def _images(n: int, seed: int) -> list[Image.Image]:
    return [Image.open(io.BytesIO(photo_bytes(seed + i))).convert("RGB") for i in range(n)]


def _trainer(model_dir: Path, prior: bool = True, **overrides: Any) -> Trainer:
    values = {**dict(steps=3, lr_warmup_steps=0, progress_interval=1e-6, checkpoint_every=1000), **overrides}
    comps = load_components(str(model_dir))
    cfg = build_config(overrides=values).resolved(n_photos=3, resolution=comps.native_resolution)
    return Trainer(cfg, comps, _images(3, 0), _images(2, 50) if prior else [], *PROMPTS)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def _embed(trainer: Trainer) -> torch.Tensor:
    te = trainer.acc.unwrap_model(trainer.te_p) if trainer.te_p is not None else trainer.comps.text_encoder
    return te(trainer.ids[0].to(te.device))[0].float().cpu()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_step_changes_only_the_lora(tiny_model_dir: Path, checkpointing: bool) -> None:
    t = _trainer(tiny_model_dir, learning_rate=1e-2, gradient_checkpointing=checkpointing)
    vae, te = _snapshot(t.comps.vae), _embed(t)
    unet_base = {k: v for k, v in _snapshot(t.comps.unet).items() if "lora" not in k}
    lora_before = {k: p.detach().clone() for k, p in t.trainable.items()}
    assert lora_before and all("lora" in k for k in lora_before)
    t.train(Hooks())
    assert all(torch.equal(v, t.comps.vae.state_dict()[k]) for k, v in vae.items())
    assert torch.equal(te, _embed(t))
    now = t.comps.unet.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in unet_base.items())
    assert any(not torch.equal(v, t.trainable[k]) for k, v in lora_before.items())


def test_text_encoder_changes_only_when_asked(tiny_model_dir: Path) -> None:
    for method in ("lora", "full"):
        t = _trainer(tiny_model_dir, method=method, train_text_encoder=True, learning_rate=1e-2)
        vae, before = _snapshot(t.comps.vae), _embed(t)
        t.train(Hooks())
        assert not torch.allclose(before, _embed(t)), method
        assert all(torch.equal(v, t.comps.vae.state_dict()[k]) for k, v in vae.items()), method


def test_the_prior_term_is_in_the_loss(tiny_model_dir: Path) -> None:
    def grads(t: Trainer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        t.optimizer.zero_grad()
        loss.backward(retain_graph=True)
        return {k: p.grad.clone() for k, p in t.trainable.items() if p.grad is not None}

    t1 = _trainer(tiny_model_dir, prior_loss_weight=1.0, learning_rate=1e-2)
    t1.train(Hooks())  # LoRA up-weights start at zero: move them so every gradient is live
    total, inst, prior = t1.compute_loss(t1.seed_for(0))
    assert prior is not None and torch.allclose(total, inst + prior)
    with_prior, without = grads(t1, total), grads(t1, inst)
    assert any(not torch.allclose(with_prior[k], without[k]) for k in with_prior)

    t2 = _trainer(tiny_model_dir, prior_loss_weight=2.5)  # same draws, other weight
    total2, inst2, prior2 = t2.compute_loss(t2.seed_for(0))
    assert prior2 is not None and torch.allclose(total2, inst2 + 2.5 * prior2)

    t0 = _trainer(tiny_model_dir, prior_loss_weight=0.0)  # weight 0: no class batch at all
    total0, inst0, prior0 = t0.compute_loss(t0.seed_for(0))
    assert prior0 is None and torch.equal(total0, inst0) and not t0.prior


def test_the_model_learns_a_fixed_batch(tiny_model_dir: Path) -> None:
    """Full fine-tune, the real step (clipping, schedule) on one fixed batch: the loss on
    that batch falls far below its start."""
    comps = load_components(str(tiny_model_dir))
    cfg = build_config(
        overrides=dict(
            method="full", steps=60, learning_rate=1e-3, lr_warmup_steps=0, prior_preservation=False
        )
    ).resolved(n_photos=1, resolution=comps.native_resolution)
    t = Trainer(cfg, comps, _images(1, 0), [], *PROMPTS)
    fixed = t.seed_for(10_000)
    t.seed_for = lambda step, micro=0: fixed  # type: ignore[method-assign]

    def probe() -> float:
        with torch.no_grad():
            return t.compute_loss(fixed)[0].item()

    start = probe()
    t.train(Hooks())
    assert t.step == 60
    assert probe() < 0.1 * start


def test_nan_stops_training_before_anything_is_saved(tiny_model_dir: Path) -> None:
    t = _trainer(tiny_model_dir, steps=4, checkpoint_every=2)
    saved: list[int] = []
    with torch.no_grad():
        next(iter(t.trainable.values())).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged"):
        t.train(Hooks(save_checkpoint=lambda step, state: saved.append(step)))
    assert saved == []


def test_precision_can_change_between_trainings_in_one_process(tiny_model_dir: Path) -> None:
    """bf16 on CPU runs the GPU code path: half-precision base weights, fp32 LoRA weights."""
    _trainer(tiny_model_dir, mixed_precision="no").train(Hooks())
    t = _trainer(tiny_model_dir, mixed_precision="bf16", steps=2)
    assert t.precision == "bf16" and t.acc.mixed_precision == "bf16"
    assert t.comps.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in t.trainable.values())
    t.train(Hooks())
    assert t.step == 2 and t.stats.last_loss is not None
