"""A module's forward, fast per input shape: compiled and, on a GPU, replayed as a CUDA graph.

`FastForward` replaces one module's `forward` (the UNet's, the VAE decoder's). Each call
is keyed by its input signature (tensor shapes, dtypes, devices, and the plain values of
the other arguments). A signature with a built runner goes through it: the compiled
function, or on CUDA one captured graph of it (inputs copied into static buffers, one
replay, the output copied out), which removes the per-kernel launch cost that makes
batch 1 launch-bound. Any other signature is served at once by the eager module while
its runner is built in the background (`Builder`): a person never waits for a compile.
`build_now` builds in the foreground: the warm-up, before the worker's first claim.

Why a captured graph stays right across people: it reads the parameters at fixed
addresses, and adapters are merged into those very tensors by value, in place
(`resident_adapters`), so each replay sees the current person's weights. The module tree
never changes while a graph exists (adapter files are read beside the model).

Whatever fails to compile or capture falls back, with one log line, to the next best:
captured -> compiled -> eager.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)
WARM_RUNS = 2  # runs on a side stream before a capture: lazy init, autotuning, allocations
Call = tuple[tuple[Any, ...], dict[str, Any]]


def signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    """What a runner is specialised for, or None when a call cannot be replayed."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key: list[Hashable] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            key.append((tuple(leaf.shape), leaf.dtype, leaf.device.type, leaf.device.index))
        elif leaf is None or isinstance(leaf, bool | int | float | str):
            key.append((type(leaf).__name__, leaf))
        else:
            return None
    return tuple(key)


def _clone(tree: Any) -> Any:
    """A copy of every tensor, contiguous (one layout per signature: no stride recompiles)."""
    return pytree.tree_map(
        lambda t: t.clone(memory_format=torch.contiguous_format) if isinstance(t, torch.Tensor) else t, tree
    )


def _contiguous(tree: Any) -> Any:
    # img2img latents come out of the VAE encoder channels-last, decoder tiles are views: a
    # compiled graph guards on strides, so every call reaches it in one layout.
    return pytree.tree_map(lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, tree)


class GraphRunner:
    """One CUDA graph of `fn` for one input signature."""

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], pool: Any
    ) -> None:
        self.args, self.kwargs = _clone((args, kwargs))  # static inputs: the graph reads these
        self.inputs = [t for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_RUNS):
                fn(*self.args, **self.kwargs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the eager calls other threads make meanwhile do not break the capture.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = fn(*self.args, **self.kwargs)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        given = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        for static, value in zip(self.inputs, given, strict=True):
            static.copy_(value)
        self.graph.replay()
        # Copied out: the next replay (of any graph sharing the pool) writes over `out`.
        return _clone(self.out)


@dataclass
class Runner:
    """What serves one signature, and how it was built."""

    call: Callable[[tuple[Any, ...], dict[str, Any]], Any]
    how: str  # "graph", "compiled" or "eager"


@dataclass
class BuildJob:
    target: FastForward
    key: Hashable
    call: Call


class Builder:
    """One background thread that builds runners, one at a time, in order of first use.

    Two locks keep a background build apart from the jobs: `job_lock` (held by a job while
    it draws) around a capture, so a capture never interleaves with a job's kernels, and
    `tree_lock` (held while an adapter file changes the module tree for a moment) around
    compiling and capturing, so no graph ever sees a half-changed model. Always in that
    order, as the jobs take them."""

    def __init__(self, job_lock: threading.Lock, tree_lock: threading.Lock) -> None:
        self.job_lock, self.tree_lock = job_lock, tree_lock
        self.after_build: Callable[[], None] | None = None  # e.g. save the compile cache
        self._queue: queue.Queue[BuildJob] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, job: BuildJob) -> None:
        self.idle.clear()
        self._queue.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="graph-builder", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                with torch.inference_mode():
                    job.target.install(job.key, job.target.make_runner(job.call, self))
                if self.after_build is not None:
                    self.after_build()
            except Exception:  # a build that fails leaves the eager path serving that shape
                log.exception("background build of %s failed", job.target.describe(job.call))
            finally:
                if self._queue.empty():
                    self.idle.set()


@dataclass
class FastForward:
    """The forward of `module`, routed per signature to a built runner or to eager."""

    module: torch.nn.Module
    name: str
    compiled: Callable[..., Any] | None  # torch.compile'd eager forward, or None: no compile
    cuda_graphs: bool
    builder: Builder
    pool: Any = None  # CUDA graph memory pool shared by this module's graphs
    dynamic: Callable[[tuple[Any, ...], dict[str, Any]], list[torch.Tensor]] | None = None  # batch inputs
    foreground: bool = False  # build new shapes on the spot (the warm-up), not in the background
    prepare: Callable[[tuple[Any, ...], dict[str, Any]], Call] | None = None  # inputs in one canonical form
    compile_when: Callable[[Call], bool] | None = None  # else a new shape is only captured (no compile)
    runners: dict[Hashable, Runner] = field(default_factory=dict)
    pending: set[Hashable] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)  # calls by runner kind (tests, metrics)

    def __post_init__(self) -> None:
        self.eager = type(self.module).forward.__get__(self.module)
        self._guard = threading.Lock()
        if self.cuda_graphs and self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.prepare is not None:
            args, kwargs = self.prepare(args, kwargs)
        key = signature(args, kwargs)
        runner = self.runners.get(key) if key is not None else None
        if runner is None and key is not None and self.foreground:
            self.build_now(args, kwargs)
            runner = self.runners.get(key)
        if runner is not None:
            self.counts[runner.how] += 1
            return runner.call(args, kwargs)
        self.counts["eager"] += 1
        self.submit(args, kwargs)
        return self.eager(*args, **kwargs)

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Build the runner for this call's signature in the background (once)."""
        key = signature(args, kwargs)
        if key is None or self.compiled is None:
            return
        with self._guard:
            first = key not in self.pending and key not in self.runners
            self.pending.add(key)
        if first:
            self.builder.submit(BuildJob(self, key, _clone((args, kwargs))))

    def build_now(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Build the runner for this call's signature here and now (warm-up). Returns how
        it will be served: graph, compiled or eager."""
        key = signature(args, kwargs)
        if key is None or self.compiled is None:
            return "eager"
        with self._guard:
            self.pending.add(key)
        runner = self.make_runner((args, kwargs), None)  # the caller holds the job's locks
        self.install(key, runner)
        return runner.how

    def install(self, key: Hashable, runner: Runner) -> None:
        self.runners[key] = runner

    def describe(self, call: Call) -> str:
        first = next((t for t in pytree.tree_leaves(call) if isinstance(t, torch.Tensor)), None)
        shape = "x".join(map(str, first.shape)) if first is not None else "?"
        return f"{self.name} {shape}"

    @staticmethod
    def label(key: Hashable) -> str:
        """The first tensor's shape of a signature: `2x4x64x64`."""
        first = next((part for part in key[1:] if isinstance(part[0], tuple)), None)  # type: ignore[index]
        return "x".join(map(str, first[0])) if first is not None else "?"

    def _compile(self, call: Call) -> None:
        """Compile (or load from the caches) the graph for this call, batch dynamic where asked."""
        if self.dynamic is not None:
            args, kwargs = _clone(call)
            batch = self.dynamic(args, kwargs)
            if batch and all(t.shape[0] >= 2 for t in batch):  # 1 is always specialised
                try:
                    for t in batch:
                        torch._dynamo.mark_dynamic(t, 0)
                    self.compiled(*args, **kwargs)  # type: ignore[misc]
                    return
                except Exception as exc:
                    log.warning("%s: no dynamic batch (%s); one graph per batch size",
                                self.describe(call), str(exc).splitlines()[0])  # fmt: skip
        self.compiled(*call[0], **call[1])  # type: ignore[misc]

    def make_runner(self, call: Call, builder: Builder | None) -> Runner:
        """Compile, then capture. `builder`: in the background, under its locks; None: the
        caller (the warm-up) holds the job's locks already."""
        args, kwargs = call
        what = self.describe(call)
        fn: Callable[..., Any] = self.eager
        how = "eager"
        if self.compiled is not None and (self.compile_when is None or self.compile_when(call)):
            try:
                with builder.tree_lock if builder is not None else nullcontext():
                    self._compile(call)  # compiles (or loads from the caches) now
                fn, how = self.compiled, "compiled"
            except Exception as exc:
                log.warning("compiling %s failed, it stays eager: %s", what, str(exc).splitlines()[0])
        if self.cuda_graphs:
            try:
                if builder is None:
                    graph = GraphRunner(fn, args, kwargs, self.pool)
                else:
                    with builder.job_lock, builder.tree_lock:
                        graph = GraphRunner(fn, args, kwargs, self.pool)
                log.info("%s: %s, captured as a CUDA graph", what, how)
                return Runner(graph, "graph")
            except Exception as exc:
                log.warning("capturing %s failed, it stays %s: %s", what, how, str(exc).splitlines()[0])
        log.info("%s: %s", what, how)
        if how == "eager":
            return Runner(lambda a, k: fn(*a, **k), how)
        return Runner(lambda a, k: fn(*_contiguous(a), **_contiguous(k)), how)
