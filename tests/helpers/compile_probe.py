"""A worker-like process for compile-store tests: load the store, compile, save, report.

    python -m tests.helpers.compile_probe FUNCTION [FUNCTION …]

Settings come from the DREAMBOT_* environment (as a worker's do); torch's local caches from
TORCHINDUCTOR_CACHE_DIR, which each test process gets fresh, so a cache hit can only come
from the store. Prints one JSON line: how many artifacts were loaded and saved, and torch's
own counters of FX-graph and AOTAutograd cache hits and misses.
"""

from __future__ import annotations

import json
import sys

import torch

from core.settings import load_settings
from gpu_worker.compile_store import CompileKey, store_from_settings

KEY = CompileKey(purpose="test", base_model="probe", options={"backend": "inductor"})


def mlp(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x @ x.T + 1).sum(dim=0)


def conv(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(torch.nn.functional.avg_pool1d(x[None], 2)[0] * 3).cumsum(0)


FUNCTIONS = {"mlp": mlp, "conv": conv}


def main(names: list[str]) -> None:
    from torch._dynamo.utils import counters

    store = store_from_settings(load_settings())
    assert store is not None
    loaded = store.load(KEY)
    for name in names:
        torch.compile(FUNCTIONS[name], backend="inductor", dynamic=False)(torch.randn(8, 8))
    saved = store.save(KEY)
    report = {
        "loaded": loaded,
        "saved": saved,
        "fx_hit": counters["inductor"]["fxgraph_cache_hit"],
        "fx_miss": counters["inductor"]["fxgraph_cache_miss"],
        "aot_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "aot_miss": counters["aot_autograd"]["autograd_cache_miss"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
