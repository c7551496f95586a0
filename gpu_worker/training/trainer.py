"""The DreamBooth training loop: cached latents and embeddings, prior loss, exact resume.

Why it is faster and lighter than diffusers' example scripts:
- every photo and class image goes through the VAE once (mean and std of its latent
  distribution are kept; each step draws a fresh sample), and the VAE then leaves the GPU;
- with a frozen text encoder the two prompt embeddings are computed once and the text
  encoder leaves the GPU too;
- the loss is read back to the host only about once a second, and each step's random
  draws are made on the device, so the host never waits for the GPU between steps;
- fused AdamW on CUDA, TF32 matmuls, LoRA base weights in half precision;
- one memory format and no per-op weight casts (`layout`); on CUDA the UNet is compiled
  and the whole step is replayed as one CUDA graph (`graphed_step`), else run eagerly.

Why resume is exact: all randomness of step `s` (which photo, flip, latent sample, noise,
timestep) comes from a generator seeded with (seed, s), never from a running RNG, so the
state to save is just weights, optimizer, LR schedule, loss scaler and the step number.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from PIL import Image

from core.errors import JobCancelled, UserFacingError
from core.job_progress import JobPhase, JobProgress
from core.train_config import TrainConfig
from gpu_worker.training import step_runner
from gpu_worker.training.data import latent_distribution, token_ids
from gpu_worker.training.layout import channels_last
from gpu_worker.training.models import (
    Components,
    dtype_for,
    make_optimizer,
    pick_precision,
    want_8bit_adam,
)
from gpu_worker.training.monitor import x0_preview
from gpu_worker.training.prepare import move_module, prepare_models

log = logging.getLogger(__name__)

# Interruptions that leave a resumable checkpoint behind (a crash does not: its state is suspect).
INTERRUPTS: tuple[type[BaseException], ...] = (JobCancelled, KeyboardInterrupt)
try:  # a worker's soft time limit; the trainer also runs without Celery (benchmarks, bare GPU images)
    from celery.exceptions import SoftTimeLimitExceeded

    INTERRUPTS += (SoftTimeLimitExceeded,)
except ImportError:
    pass
CHECKPOINT_VERSION = 1


class TrainingDiverged(UserFacingError):
    """The loss or the weights became NaN/inf: stop before anything broken is saved."""


@dataclass
class Hooks:
    """How a run talks to the outside: progress (may raise to stop), lease check, checkpoints,
    and scalars for TensorBoard at each progress report."""

    progress: Callable[[JobProgress], None] = lambda report: None
    may_write: Callable[[], bool] = lambda: True
    save_checkpoint: Callable[[int, dict[str, Any]], None] = lambda step, state: None
    metrics: Callable[[int, dict[str, float]], None] = lambda step, values: None


@dataclass
class Stats:
    timings: list[tuple[int, float]] = field(default_factory=list)  # (step, monotonic) at each sync
    last_loss: float | None = None
    checkpoints: list[int] = field(default_factory=list)


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0) -> int:
    return ((seed & 0xFFFFFFFF) * 1_000_003 + step * 1009 + micro * 31 + rank * 7919) % (2**63)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        comps: Components,
        instance_images: list[Image.Image],
        class_images: list[Image.Image],
        instance_prompt: str,
        class_prompt: str,
        *,
        fingerprint: str = "",
    ) -> None:
        assert cfg.steps is not None and cfg.resolution is not None, "pass cfg.resolved(...)"
        self.cfg, self.comps, self.fingerprint = cfg, comps, fingerprint
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = pick_precision(cfg.mixed_precision, device)
        # Accelerate keeps process-wide state that refuses another precision; a worker runs
        # one training at a time, and the next job may ask for a different one.
        AcceleratorState._reset_state()
        # `cpu` tells accelerate that several processes without a GPU are one run (gloo), as
        # `accelerate launch` gives several GPUs; one process is unaffected.
        self.acc = Accelerator(mixed_precision=self.precision, cpu=device.type == "cpu")
        self.device = self.acc.device
        self.weight_dtype = dtype_for(self.precision)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one shape for the whole run: time it once
            if cfg.allow_tf32:
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
        self.prior = bool(cfg.prior_preservation and class_images and cfg.prior_loss_weight > 0)
        self.train_te = cfg.train_text_encoder
        self.step = 0
        self.saved_step = -1
        self.stats = Stats()
        self.preview: str | None = None  # the latest x0 thumbnail, repeated in every report
        self._preview_at = -math.inf  # the first report carries one; -inf: never made yet
        self.trainable = prepare_models(comps, cfg, self.weight_dtype, self.device)
        self._cache_latents(instance_images, class_images if self.prior else [])
        self._cache_text(instance_prompt, class_prompt)
        self._setup_optimizer()

    # -- setup --------------------------------------------------------------------------------
    def _cache_latents(self, instance: list[Image.Image], klass: list[Image.Image]) -> None:
        vae = self.comps.vae
        # bf16 keeps fp32's range; fp16 can overflow in the SD VAE, so it encodes in fp32.
        move_module(vae, self.device, torch.bfloat16 if self.precision == "bf16" else torch.float32)
        res, flip = self.cfg.resolution or 0, self.cfg.random_flip
        self.inst_mean, self.inst_std = latent_distribution(vae, instance, res, flip, self.device)
        self.cls_mean: torch.Tensor | None
        self.cls_std: torch.Tensor | None
        self.cls_mean, self.cls_std = (
            latent_distribution(vae, klass, res, flip, self.device) if klass else (None, None)
        )
        self.scaling = float(vae.config.scaling_factor)
        vae.to("cpu")  # not needed again: free the GPU memory
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _cache_text(self, instance_prompt: str, class_prompt: str) -> None:
        te, tok = self.comps.text_encoder, self.comps.tokenizer
        self.ids = (token_ids(tok, instance_prompt, self.device), token_ids(tok, class_prompt, self.device))
        self.embeds: tuple[torch.Tensor, torch.Tensor] | None = None
        if not self.train_te:
            te.to(self.device)
            with torch.no_grad():
                inst, cls = (te(i)[0].to(self.weight_dtype) for i in self.ids)
                self.embeds = (inst, cls)
            te.to("cpu")

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = [
            {"params": [p for k, p in self.trainable.items() if k.startswith("unet.")], "lr": cfg.unet_lr()}
        ]
        te_params = [p for k, p in self.trainable.items() if k.startswith("text_encoder.")]
        if te_params:
            groups.append({"params": te_params, "lr": cfg.text_encoder_lr or cfg.unet_lr()})
        eight_bit = want_8bit_adam(cfg.use_8bit_adam, cfg.method, self.device)
        graphable = step_runner.graphable(self, eight_bit)
        optimizer = make_optimizer(
            groups,
            eight_bit=eight_bit,
            device=self.device,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=min(cfg.lr_warmup_steps, cfg.steps or 0),
            num_training_steps=max(cfg.steps or 1, 1),
        )
        unet, te = self.comps.unet, self.comps.text_encoder
        if self.acc.num_processes > 1:  # DDP: accelerate wraps the models
            prepared = self.acc.prepare(unet, *([te] if self.train_te else []), optimizer)
            unet, te, optimizer = prepared[0], prepared[1] if self.train_te else te, prepared[-1]
        else:  # one process: the modules stay as they are (a compiled UNet stays valid across jobs)
            optimizer = self.acc.prepare(optimizer)
        self.unet_p, self.te_p, self.optimizer = unet, te if self.train_te else None, optimizer
        self.runner = step_runner.StepRunner(self, graphable)

    def autocast(self) -> Any:
        """The run's mixed precision around a forward pass (a no-op in fp32)."""
        return torch.autocast(self.device.type, self.weight_dtype, enabled=self.weight_dtype != torch.float32)

    # -- one step -----------------------------------------------------------------------------
    def seed_for(self, step: int, micro: int = 0) -> int:
        return step_seed(self.cfg.seed, step, micro, self.acc.process_index)

    def _draw(self, mean: torch.Tensor, std: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, v = mean.shape[:2]
        bs = self.cfg.train_batch_size
        dev = self.device
        i = torch.randint(n, (bs,), generator=g, device=dev)
        j = torch.randint(v, (bs,), generator=g, device=dev)
        eps = torch.randn((bs, *mean.shape[2:]), generator=g, device=dev)
        return (mean[i, j] + std[i, j] * eps) * self.scaling

    def draw(self, seed: int) -> dict[str, torch.Tensor]:
        """Everything random in the step of `seed`: the latents (photo, flip, sample), the noise
        and the timesteps. Drawn on the training device: a host-made tensor copied in would
        make the host wait for the GPU at every step (pageable copies sync)."""
        cfg, sched, dev = self.cfg, self.comps.noise_scheduler, self.device
        g = torch.Generator(device=dev).manual_seed(seed)
        parts = [self._draw(self.inst_mean, self.inst_std, g)]
        if self.prior:
            assert self.cls_mean is not None and self.cls_std is not None  # cached with the prior
            parts.append(self._draw(self.cls_mean, self.cls_std, g))
        latents = torch.cat(parts)
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=g, device=dev)
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * torch.randn(
                (b, latents.shape[1], 1, 1), generator=g, device=dev
            )
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g, device=dev)
        return {"latents": channels_last(latents), "noise": channels_last(noise), "timesteps": timesteps}

    def compute_loss(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(total loss, instance loss, prior loss) for the batch that `seed` draws."""
        return self.loss_of(self.draw(seed))

    def loss_of(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cfg, sched = self.cfg, self.comps.noise_scheduler
        latents, noise, timesteps = batch["latents"], batch["noise"], batch["timesteps"]
        noisy = sched.add_noise(latents, noise, timesteps)
        bs = cfg.train_batch_size
        if self.te_p is not None:
            ids = torch.cat([self.ids[0]] * bs + ([self.ids[1]] * bs if self.prior else []))
            with self.autocast():
                states = self.te_p(ids)[0]
        else:
            assert self.embeds is not None
            states = torch.cat([self.embeds[0]] * bs + ([self.embeds[1]] * bs if self.prior else []))
        with self.autocast():
            pred = self.runner.unet(noisy.to(self.weight_dtype), timesteps, states, return_dict=False)[0]
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma:
            snr = compute_snr(sched, timesteps)
            weight = torch.clamp(snr, max=cfg.snr_gamma)
            weight = weight / (snr + 1 if sched.config.prediction_type == "v_prediction" else snr)
            per = per * weight
        inst = per[:bs].mean()
        prior = per[bs:].mean() if self.prior else None
        total = inst if prior is None else inst + cfg.prior_loss_weight * prior
        return total, inst, prior

    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns its (detached) loss."""
        return self.runner.step()

    # -- the loop ------------------------------------------------------------------------------
    def train(self, hooks: Hooks) -> Stats:
        """Run from `self.step` to `cfg.steps`; checkpoint every N steps and on interruption."""
        cfg, total = self.cfg, self.cfg.steps or 0
        self._loss_sum, self._loss_n = torch.zeros((), device=self.device), 0
        started, last_report = time.monotonic(), time.monotonic()
        start_step, in_step = self.step, False
        self.stats.timings.append((self.step, started))
        try:
            hooks.progress(JobProgress(phase=JobPhase.TRAINING, step=self.step, total=total))
            while self.step < total:
                in_step = True
                self._loss_sum += self.train_step()
                self._loss_n += 1
                self.step += 1
                in_step = False
                if self.step % cfg.checkpoint_every == 0 and self.step < total:
                    self.checkpoint(hooks)
                now = time.monotonic()
                if now - last_report >= cfg.progress_interval or self.step == total:
                    self._report(hooks, start_step, started)
                    last_report = now
        except INTERRUPTS:
            # Mid-step the weights may be half-updated: then the last periodic checkpoint stands.
            if not in_step and self.step > max(self.saved_step, 0) and hooks.may_write():
                log.info("interrupted at step %d: saving a checkpoint to resume from", self.step)
                self.checkpoint(hooks)
            raise
        self._check_finite()
        return self.stats

    def _report(self, hooks: Hooks, start_step: int, started: float) -> None:
        loss = (self._loss_sum / max(self._loss_n, 1)).item()  # the only regular host sync
        now = time.monotonic()
        last_step, last_time = self.stats.timings[-1]
        self.stats.timings.append((self.step, now))
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"Training diverged (the loss became {loss} by step {self.step}); nothing was saved. "
                "Try a lower learning rate."
            )
        self._loss_sum.zero_()
        self._loss_n = 0
        self.stats.last_loss = loss
        rate = (self.step - start_step) / max(now - started, 1e-9)
        eta = ((self.cfg.steps or 0) - self.step) / rate if rate > 0 else None
        recent = (self.step - last_step) / max(now - last_time, 1e-9)  # this interval only
        lr = float(self.lr_scheduler.get_last_lr()[0])
        hooks.metrics(self.step, {"loss": loss, "lr": lr, "steps_per_s": recent})
        self._maybe_preview(now)
        hooks.progress(
            JobProgress(
                phase=JobPhase.TRAINING,
                step=self.step,
                total=self.cfg.steps,
                loss=round(loss, 6),
                steps_per_s=round(rate, 3),
                eta_s=None if eta is None else round(eta, 1),
                device=self.acc.device.type,  # the card says "on this CPU" when it is one
                preview=self.preview or None,
            )
        )

    def _maybe_preview(self, now: float) -> None:
        every = self.cfg.preview_interval
        if not every or now - self._preview_at < every or not self.acc.is_main_process:
            return
        self._preview_at = now
        try:
            # Own generator and no gradients: the training trajectory is untouched.
            self.preview = x0_preview(self)
        except ValueError as exc:  # e.g. a model whose latents are not 4-channel SD ones
            log.info("no training preview for this model (%s)", exc)
            self._preview_at = math.inf  # and no further tries

    def release_optimizer(self) -> None:
        """Drop the optimizer state (twice the trainable weights for AdamW) and the captured
        step once the trained weights are saved, so inference at the end has that memory back."""
        self.runner.drop_graph()
        step_runner.torch_optimizer(self.optimizer).state.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _check_finite(self) -> None:
        if self._loss_n and not torch.isfinite(self._loss_sum).item():
            raise TrainingDiverged(
                f"Training diverged (NaN/inf loss near step {self.step}); nothing was saved."
            )
        for name, p in self.trainable.items():
            if not torch.isfinite(p).all().item():
                raise TrainingDiverged(f"Training diverged ({name} became NaN/inf); nothing was saved.")

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self, hooks: Hooks) -> None:
        self._check_finite()
        if self.acc.is_main_process:
            hooks.save_checkpoint(self.step, self.state_dict())
        self.saved_step = self.step
        self.stats.checkpoints.append(self.step)

    def state_dict(self) -> dict[str, Any]:
        scaler = getattr(self.acc, "scaler", None)
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "step": self.step,
            "trainable": {k: p.detach().to("cpu", copy=True) for k, p in self.trainable.items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.trainable) ^ set(state["trainable"])
        if missing:
            raise ValueError(f"checkpoint does not match the model ({len(missing)} tensors differ)")
        with torch.no_grad():
            for k, p in self.trainable.items():
                p.copy_(state["trainable"][k])
        self.runner.drop_graph()  # the optimizer's state tensors are replaced: capture again
        self.optimizer.load_state_dict(state["optimizer"])
        for group in step_runner.torch_optimizer(
            self.optimizer
        ).param_groups:  # lr tensors stay on the device
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = group["lr"].to(self.device)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(self.acc, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = int(state["step"])
