"""Watching a training: TensorBoard event files (and Weights & Biases), and x0 previews.

`RunLog` writes loss, learning rate and steps/s at every progress report to
`<data_dir>/tensorboard/job-{id}/` (point `tensorboard --logdir <data_dir>/tensorboard`
at it to watch live) and copies the folder to storage under `jobs/{id}/tensorboard/` at
each checkpoint and at the end, so the curves outlive the worker's disk. A resumed
attempt writes with a `purge_step` just after the checkpoint's step: TensorBoard then
drops the earlier attempt's points after the checkpoint, and the curve shows the run
that counted.
Weights & Biases is used as well when `wandb` is importable and DREAMBOT_WANDB_PROJECT is
set; it is never required.

`x0_preview` is the job card's thumbnail during training: the UNet's current guess of
the first instance photo from a half-noised copy of it (one extra forward pass, no VAE),
through the same latent-to-RGB approximation as sampling's previews.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.settings import Settings
from core.storage import Storage
from gpu_worker.preview import latent_preview

if TYPE_CHECKING:
    from gpu_worker.training.trainer import Trainer

log = logging.getLogger(__name__)

PREVIEW_SEED = 4242  # fixed noise: successive previews differ only by what the model learned
PREVIEW_T = 0.5  # fraction of the noise schedule: enough noise that the guess shows the model


def tensorboard_prefix(job_id: int) -> str:
    return f"jobs/{job_id}/tensorboard/"


class RunLog:
    """Scalars of one training job, to TensorBoard (and W&B), mirrored to storage."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        job_id: int,
        config: dict[str, Any],
        resumed_from: int = 0,
    ) -> None:
        self.storage = storage
        self.folder = Path(settings.data_dir) / "tensorboard" / f"job-{job_id}"
        self.prefix = tensorboard_prefix(job_id)
        self.writer: Any = None
        self.wandb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the worker extra installs it; a trimmed install just logs less
            log.warning("the tensorboard package is not installed: no event files for job %d", job_id)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            # The checkpoint holds step `resumed_from`: points after it are redone now.
            self.writer = SummaryWriter(
                str(self.folder), purge_step=resumed_from + 1 if resumed_from else None
            )
            text = "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```"
            self.writer.add_text("config", text, resumed_from)
        if settings.wandb_project and importlib.util.find_spec("wandb") is not None:
            self.wandb = _start_wandb(settings.wandb_project, job_id, config, self.folder)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)
        if self.wandb is not None:
            try:
                self.wandb.log({f"train/{k}": v for k, v in values.items()}, step=step)
            except Exception as exc:  # a metrics service must never stop a training
                log.warning("wandb logging failed (%s); going on without it", exc)
                self.wandb = None

    def upload(self) -> None:
        """Flush and copy the event files to storage (whole files: they are small)."""
        if self.writer is None:
            return
        self.writer.flush()
        try:
            for path in sorted(self.folder.rglob("*")):
                if path.is_file():
                    with path.open("rb") as f:
                        self.storage.put(self.prefix + path.relative_to(self.folder).as_posix(), f)
        except Exception as exc:  # curves are a nicety: never the reason a training fails
            log.warning("could not copy TensorBoard files to storage (%s); next time, then", exc)

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.upload()
                self.writer.close()
                self.writer = None
        finally:
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None


def _start_wandb(project: str, job_id: int, config: dict[str, Any], folder: Path) -> Any:
    import wandb

    try:
        # One W&B run per job: a resumed attempt continues the same run.
        return wandb.init(
            project=project,
            name=f"job-{job_id}",
            id=f"dreambot-job-{job_id}",
            resume="allow",
            config=config,
            dir=str(folder),
        )
    except Exception as exc:
        log.warning("could not start a Weights & Biases run (%s); TensorBoard only", exc)
        return None


@torch.no_grad()
def x0_preview(trainer: Trainer) -> str:
    """A base64 JPEG of the model's x0 prediction for the first instance photo."""
    sched, device = trainer.comps.noise_scheduler, trainer.device
    g = torch.Generator().manual_seed(trainer.cfg.seed + PREVIEW_SEED)
    latent = trainer.inst_mean[:1, 0].float() * trainer.scaling  # the photo's latent (mean, unflipped)
    noise = torch.randn(latent.shape, generator=g).to(device)
    t = torch.full((1,), int(sched.config.num_train_timesteps * PREVIEW_T), dtype=torch.long, device=device)
    noisy = sched.add_noise(latent, noise, t)
    if trainer.embeds is not None:
        states = trainer.embeds[0]
    else:  # the text encoder is training: its current output is part of the picture
        assert trainer.te_p is not None
        states = trainer.acc.unwrap_model(trainer.te_p)(trainer.ids[0].to(device))[0]
    # Unwrapped: no DDP collective, so only the main process needs to run this.
    unet = trainer.acc.unwrap_model(trainer.unet_p)
    with trainer.acc.autocast():
        pred = unet(noisy.to(trainer.weight_dtype), t, states, return_dict=False)[0].float()
    alpha = sched.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1).float()
    if sched.config.prediction_type == "v_prediction":
        x0 = alpha.sqrt() * noisy - (1 - alpha).sqrt() * pred
    else:
        x0 = (noisy - (1 - alpha).sqrt() * pred) / alpha.sqrt()
    return latent_preview(x0[0].cpu().numpy())
