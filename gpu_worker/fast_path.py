"""The resident pipeline's fast path: its UNet and VAE decoder compiled and captured per shape.

`install` routes `pipe.unet` and `pipe.vae.decoder` through `graphs.FastForward` when
`DREAMBOT_SAMPLE_COMPILE` says so (auto: on a GPU), after loading the compile cache of
this torch, device, model and options from storage (`compile_store`), so a graph the
fleet already compiled is only read. The UNet is compiled with a dynamic batch size (one
compile serves batch 1-4 with CFG; each batch still gets its own CUDA graph) and one
timestep type for every scheduler. The VAE decodes image by image; it compiles for the
native size, and the odd tile sizes of a 2x upscale are captured without compiling.

`gpu_worker.pipelines.warm` draws a short picture for each shape of `DREAMBOT_SAMPLE_WARM`
with builds in the foreground, before the worker's first claim, then queues the UNet
builds of `DREAMBOT_SAMPLE_WARM_LATER` (`prebuild_unet`); any other shape builds on its
first use while that call is drawn eager.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from core.settings import Settings
from gpu_worker.compile_store import CompileKey, CompileStore, store_from_settings
from gpu_worker.graphs import Builder, FastForward

log = logging.getLogger(__name__)
# Tests swap the backend for a fast one (dynamo's eager/aot_eager: the same tracing, guards
# and recompiles, no kernel generation).
COMPILE_OPTIONS: dict[str, Any] = {"backend": "inductor", "fullgraph": False}
# Only the batch dimension we mark is dynamic; a new image size is a new static graph (the
# fastest kernels) rather than a slower dynamic one. A worker sees few sizes, but more than 8.
DYNAMO_CONFIG: dict[str, Any] = {"automatic_dynamic_shapes": False, "recompile_limit": 64}


def compile_wanted(settings: Settings, device: torch.device) -> bool:
    """`DREAMBOT_SAMPLE_COMPILE`: auto compiles on a GPU only; a CPU stays eager unless asked."""
    mode = settings.sample_compile
    if mode in ("on", True):
        return True
    if mode in ("off", False):
        return False
    return device.type == "cuda"


def compiled(eager: Callable[..., Any]) -> Callable[..., Any]:
    """`eager` under torch.compile with our options and dynamo settings."""
    fn = torch.compile(eager, **COMPILE_OPTIONS)

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(**DYNAMO_CONFIG):
            return fn(*args, **kwargs)

    return run


def unet_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The UNet inputs whose first dimension is the batch (latents, text embeddings)."""
    found = [args[0] if args else kwargs.get("sample"), kwargs.get("encoder_hidden_states")]
    return [t for t in found if isinstance(t, torch.Tensor)]


def unet_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The timestep as a float32 tensor on the latents' device, whatever the scheduler gave
    (DPM++ and DDIM: int64, Euler: float32, or a number): one graph serves every scheduler.
    Exact: the UNet turns it into float32 before anything else, and steps are integers < 2^24."""
    if len(args) < 2 or not isinstance(args[0], torch.Tensor):
        return args, kwargs
    sample, timestep = args[0], args[1]
    if (
        isinstance(timestep, torch.Tensor)
        and timestep.dtype == torch.float32
        and timestep.device == sample.device
    ):
        return args, kwargs
    timestep = torch.as_tensor(timestep, device=sample.device).to(torch.float32)
    return (sample, timestep, *args[2:]), kwargs


@dataclass
class FastPath:
    unet: FastForward
    decoder: FastForward
    builder: Builder
    store: CompileStore | None
    key: CompileKey

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Build every new shape on the spot (the warm-up), instead of in the background."""
        self.unet.foreground = self.decoder.foreground = True
        try:
            yield
        finally:
            self.unet.foreground = self.decoder.foreground = False

    def prebuild_unet(self, batch: int, height: int, width: int) -> None:
        """Queue a background build of the UNet for latents of this shape (with CFG), from
        inputs shaped as the pipelines pass them: no draw, no lock, nobody waits."""
        unet: Any = self.unet.module  # a diffusers UNet: its config and dtype are not in torch's types
        dtype, device = unet.dtype, next(unet.parameters()).device
        sample = torch.zeros(2 * batch, unet.config.in_channels, height, width, device=device, dtype=dtype)
        context = torch.zeros(2 * batch, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
        kwargs = dict(encoder_hidden_states=context, timestep_cond=None, cross_attention_kwargs=None,
                      added_cond_kwargs=None, return_dict=False)  # fmt: skip
        self.unet.submit((sample, torch.tensor(999.0, device=device)), kwargs)

    def save(self) -> None:
        if self.store is not None:
            try:
                self.store.save(self.key)
            except Exception as exc:  # the store is an optimisation: never fail a build for it
                log.warning("compile cache: could not save: %s", exc)

    def served(self) -> dict[str, dict[str, int]]:
        """Calls so far by how they were served (graph / compiled / eager), per module."""
        return {"unet": dict(self.unet.counts), "vae_decoder": dict(self.decoder.counts)}

    def shapes(self) -> dict[str, list[str]]:
        """Built shapes and how they are served, per module (what a worker reports as warm)."""
        return {
            f.name: sorted(f"{f.label(k)} ({r.how})" for k, r in f.runners.items())
            for f in (self.unet, self.decoder)
        }


def compile_key(settings: Settings, dtype: torch.dtype) -> CompileKey:
    import diffusers

    options = {k: str(v) for k, v in COMPILE_OPTIONS.items()} | {"dynamic_batch": "unet"}
    return CompileKey(
        purpose="sample", base_model=settings.base_model, dtype=str(dtype), diffusers=diffusers.__version__,
        options=options,
    )  # fmt: skip


def install(
    pipe: Any,
    settings: Settings,
    device: torch.device,
    dtype: torch.dtype,
    job_lock: threading.Lock,
    tree_lock: threading.Lock,
) -> FastPath | None:
    """Route the UNet and the VAE decoder through the fast path (None: eager, as asked)."""
    if not compile_wanted(settings, device):
        return None
    graphs = device.type == "cuda" and settings.sample_cuda_graphs
    store, key = store_from_settings(settings), compile_key(settings, dtype)
    if store is not None:
        try:
            store.load(key)  # before the first compile: what the fleet compiled is only read
        except Exception as exc:
            log.warning("compile cache: could not load: %s", exc)
    builder = Builder(job_lock, tree_lock)
    pool = torch.cuda.graph_pool_handle() if graphs else None  # one pool: replays never overlap
    unet = FastForward(pipe.unet, "unet", compiled(type(pipe.unet).forward.__get__(pipe.unet)), graphs, builder,
                       pool=pool, dynamic=unet_batch, prepare=unet_inputs)  # fmt: skip
    decoder_module = pipe.vae.decoder
    native = int(pipe.unet.config.sample_size)
    # The decoder compiles for the native size only; the odd tile sizes of a 2x upscale are
    # captured eager (no launches to pay either way, and no minutes of compiling for them).
    decoder = FastForward(decoder_module, "vae decoder", compiled(type(decoder_module).forward.__get__(decoder_module)),
                          graphs, builder, pool=pool,
                          compile_when=lambda call: tuple(call[0][0].shape[-2:]) == (native, native))  # fmt: skip
    fast = FastPath(unet, decoder, builder, store, key)
    builder.after_build = fast.save
    pipe.unet.forward = unet  # the instance's forward: diffusers keeps calling `pipe.unet(...)`
    decoder_module.forward = decoder
    pipe.vae.enable_slicing()  # image by image: one decoder graph per image size
    log.info("sampling fast path: compiled%s, compile cache %s", " + CUDA graphs" if graphs else "",
             "on" if store is not None else "off")  # fmt: skip
    return fast


def warm_shapes(setting: str) -> tuple[list[int], bool]:
    """Batch sizes at the native size, and whether the 2x upscale shape, of a warm setting."""
    items = [item for item in setting.split(",") if item]
    return sorted({int(i) for i in items if i.isdigit()}), "upscale" in items
