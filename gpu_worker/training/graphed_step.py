"""A whole training step (forward, backward, clipping, optimizer) as one CUDA graph replay.

Why: the UNet step is thousands of small kernels; launched one by one from Python the host,
not the GPU, sets the pace (the H200 profile showed the GPU idle a third of each step).
Replaying a captured graph launches them all at once.

What stays outside the graph, so that a graphed run is the same run as an eager one: the
step's random draws (which photo, latent sample, noise, timestep) come from the per-step
seeded generator exactly as in eager mode and are copied into the graph's static inputs;
the learning rate is a device tensor the scheduler updates in place. So resuming from a
checkpoint replays the very same draws, and a captured run resumes exactly.

Capture needs warm-up iterations on a side stream (they compile, autotune and allocate the
gradients and optimizer state). They run with the learning rate at zero, which leaves the
weights untouched (AdamW's update and its decay are both multiplied by it), and the
optimizer state they create or change is put back afterwards.

`Replay` stands in for CUDA on a CPU: it "captures" by keeping the step and "replays" by
running it on the static inputs, so tests can check everything but the CUDA mechanics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

WARMUP_ITERS = 2
Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class Cuda:
    """The real thing: a side stream for warm-up, `torch.cuda.graph` for capture."""

    def __init__(self) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    @contextlib.contextmanager
    def warming(self) -> Iterator[None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, step: Step, static: dict[str, torch.Tensor]) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = step(static)

    def replay(self, static: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.graph is not None and self.loss is not None
        self.graph.replay()
        return self.loss

    def sync(self) -> None:
        torch.cuda.synchronize()


class Replay:
    """CPU stand-in (tests): no capture, the step itself runs at each replay."""

    def __init__(self) -> None:
        self.step: Step | None = None

    @contextlib.contextmanager
    def warming(self) -> Iterator[None]:
        yield

    def capture(self, step: Step, static: dict[str, torch.Tensor]) -> None:
        self.step = step

    def replay(self, static: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.step is not None
        return self.step(static)

    def sync(self) -> None:
        pass


# Which mechanism a graphed step uses; tests put `Replay` here to run it on a CPU.
MECHANISM: type[Cuda] | type[Replay] = Cuda


def available(device: torch.device) -> bool:
    return device.type == "cuda" or MECHANISM is not Cuda


class GraphedStep:
    """Built by `capture`; `run(batch)` copies the batch in and replays the step."""

    def __init__(self, mechanism: Any, static: dict[str, torch.Tensor]) -> None:
        self.mechanism, self.static = mechanism, static

    def run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, value in batch.items():
            self.static[name].copy_(value)
        return self.mechanism.replay(self.static)


def _saved_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {
        id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
        for p, s in optimizer.state.items()
    }


@torch.no_grad()
def _restore_state(optimizer: torch.optim.Optimizer, saved: dict[int, dict[str, torch.Tensor]]) -> None:
    """Put the optimizer state back in place (the same tensors: a graph reads their addresses);
    state the warm-up created is zeroed, which is what a first step starts from."""
    for p, state in optimizer.state.items():
        before = saved.get(id(p), {})
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                v.copy_(before[k]) if k in before else v.zero_()


def capture(step: Step, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> GraphedStep:
    """Capture `step(static_batch)` — forward, backward and the optimizer, returning the
    detached loss — so that the weights and optimizer state are as they were before.
    Raises whatever capture raises: the caller then trains eagerly."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    if not all(isinstance(lr, torch.Tensor) for lr in lrs):
        raise ValueError("a graphed step needs the learning rates as tensors (a capturable optimizer)")
    mechanism = MECHANISM()
    static = {k: v.clone() for k, v in batch.items()}
    saved_lrs, saved_state = [lr.clone() for lr in lrs], _saved_state(optimizer)
    try:
        with torch.no_grad():
            for lr in lrs:
                lr.zero_()
        with mechanism.warming():
            for _ in range(WARMUP_ITERS):
                step(static)
        mechanism.capture(step, static)
    finally:
        mechanism.sync()
        with torch.no_grad():
            for lr, before in zip(lrs, saved_lrs, strict=True):
                lr.copy_(before)
        _restore_state(optimizer, saved_state)
    return GraphedStep(mechanism, static)


def describe_failure(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]
