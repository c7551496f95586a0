"""How a training step runs: eagerly, with a compiled UNet, or as one CUDA graph replay.

On CUDA by default the UNet is compiled (`torch.compile`: fused kernels, no layout or dtype
traffic between them) and the whole step is captured as a CUDA graph (`graphed_step`: no
launch overhead). Either falls back, with one log line, when it fails: a compile error to
the plain module, a failed capture to launching the step eagerly. The compiled UNet is kept
per module object, so a worker that keeps its base model between jobs (`resident`)
compiles once and later jobs reuse the compiled code.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.training import graphed_step

if TYPE_CHECKING:
    from gpu_worker.training.trainer import Trainer

log = logging.getLogger(__name__)

# torch.compile options for the training UNet: static shapes, one graph per run shape.
# Tests swap the backend for a fast one.
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}
_compiled: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """PyTorch's optimizer inside accelerate's wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def wants_compile(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def graphable(trainer: Trainer, eight_bit: bool) -> bool:
    """Whether the step can be one CUDA graph: one GPU and process, bf16 or fp32 (fp16's loss
    scaler checks for inf on the host), no gradient accumulation, PyTorch's own AdamW."""
    cfg = trainer.cfg
    possible = (
        graphed_step.available(trainer.device)
        and trainer.acc.num_processes == 1
        and cfg.gradient_accumulation_steps == 1
        and trainer.precision != "fp16"
        and not eight_bit
    )
    if cfg.cuda_graph == "on" and not possible:
        log.info("cuda_graph=on is not possible here (one CUDA GPU, no fp16, no accumulation): eager steps")
    return possible and cfg.cuda_graph != "off"


def compiled(module: torch.nn.Module) -> Any:
    """The compiled form of `module`, made once per module object."""
    fn = _compiled.get(module)
    if fn is None:
        fn = _compiled[module] = torch.compile(module, **COMPILE_OPTIONS)
    return fn


class StepRunner:
    def __init__(self, trainer: Trainer, graphable: bool) -> None:
        self.t = trainer
        plain = trainer.unet_p
        self.unet: Any = compiled(plain) if wants_compile(trainer.cfg.compile, trainer.device) else plain
        self.graph_wanted = graphable
        self.graph: graphed_step.GraphedStep | None = None

    def drop_graph(self) -> None:
        self.graph = None

    def step(self) -> torch.Tensor:
        """One optimizer step of the trainer's current step number; its (detached) loss."""
        try:
            if self.graph_wanted and self.graph is None:
                self.graph = self._capture()
            if self.graph is not None:
                loss = self.graph.run(self.t.draw(self.t.seed_for(self.t.step))).clone()
                self.t.lr_scheduler.step()
                return loss
            return self._eager()
        except torch._dynamo.exc.TorchDynamoException as exc:
            if self.unet is self.t.unet_p:
                raise
            log.warning("torch.compile failed (%s); training without it", graphed_step.describe_failure(exc))
            self.unet, self.graph_wanted, self.graph = self.t.unet_p, False, None
            self.t.optimizer.zero_grad(set_to_none=True)  # a half-run backward may have left some
            return self._eager()  # the same step again: nothing was applied yet

    def _capture(self) -> graphed_step.GraphedStep | None:
        t = self.t
        try:
            graph = graphed_step.capture(
                self._graphed, torch_optimizer(t.optimizer), t.draw(t.seed_for(t.step))
            )
        except torch._dynamo.exc.TorchDynamoException:
            raise  # a compile failure: `step` drops the compile first
        except Exception as exc:
            log.warning(
                "CUDA graph capture failed (%s); training eagerly", graphed_step.describe_failure(exc)
            )
            self.graph_wanted = False
            t.optimizer.zero_grad(set_to_none=True)
            return None
        log.info("training step captured as one CUDA graph")
        return graph

    def _graphed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the graph holds: forward, backward, clipping, the optimizer update."""
        t, opt = self.t, torch_optimizer(self.t.optimizer)
        total = t.loss_of(batch)[0]
        total.backward()
        # As accelerate's clip does for one process without a loss scaler (foreach on CUDA).
        torch.nn.utils.clip_grad_norm_(list(t.trainable.values()), t.cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=False)  # the graph's gradient buffers stay where they are
        return total.detach()

    def _eager(self) -> torch.Tensor:
        t = self.t
        ga = t.cfg.gradient_accumulation_steps
        loss_sum = torch.zeros((), device=t.device)
        for micro in range(ga):
            sync = micro == ga - 1 or t.acc.num_processes == 1
            with nullcontext() if sync else t.acc.no_sync(t.unet_p):
                loss = t.loss_of(t.draw(t.seed_for(t.step, micro)))[0] / ga
                t.acc.backward(loss)
            loss_sum += loss.detach()
        t.acc.clip_grad_norm_(list(t.trainable.values()), t.cfg.max_grad_norm)
        t.optimizer.step()
        t.lr_scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
        return loss_sum
