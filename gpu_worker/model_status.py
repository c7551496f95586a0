"""Where the base model stands on this host, in one line: for `dreambot up` and `doctor`.

Reads the same places `model_fetch.local_base_model` loads from and never downloads; for
a hub model not yet here it asks the hub (briefly) how big the download will be, so the
person knows before the first training waits for it. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.errors import UserFacingError
from core.settings import Settings
from gpu_worker.hub_models import REVISION, find_pulled, probe, select_files
from gpu_worker.model_cache import key_prefix, model_cache
from gpu_worker.model_fetch import model_kind

STATUS_TIMEOUT = 3.0  # seconds the hub gets to say how big the model is


@dataclass(frozen=True)
class BaseModelState:
    ok: bool  # a training can start: the model is here, or it can be fetched
    local: bool  # on this host now, nothing to download
    text: str


def size(n: float) -> str:
    return tqdm.format_sizeof(n, "B")


def describe_base_model(settings: Settings, *, ask_hub: bool = True) -> BaseModelState:
    name = settings.base_model
    kind = model_kind(name)
    try:
        if kind == "storage":
            return _storage(settings, name)
        if kind == "folder":
            return _folder(name)
        return _hub(settings, name, ask_hub)
    except UserFacingError as exc:
        return BaseModelState(False, False, str(exc))


def base_model_status(settings: Settings) -> str:
    """`dreambot up`'s line: local and its size, or what the first training will download."""
    return describe_base_model(settings).text


def _storage(settings: Settings, name: str) -> BaseModelState:
    cache = model_cache(settings)
    prefix = key_prefix(name)
    manifest = cache.manifest(prefix)  # raises a one-sentence error when not published
    folder = cache.folder_for(prefix)
    if folder.is_dir():
        return BaseModelState(True, True, f"{name}: on this host ({size(manifest.total_bytes)}, {folder})")
    return BaseModelState(
        True, False, f"{name}: copied from storage to this host on first use ({size(manifest.total_bytes)})"
    )


def _folder(name: str) -> BaseModelState:
    path = Path(name).expanduser()
    if not (path / "model_index.json").is_file():
        return BaseModelState(
            False,
            False,
            f"{name} is not a diffusers model folder on this machine (no model_index.json); set "
            "DREAMBOT_BASE_MODEL to one, a hub id, or storage:<prefix>",
        )
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return BaseModelState(True, True, f"{name}: local folder ({size(total)})")


def _hub(settings: Settings, name: str, ask_hub: bool) -> BaseModelState:
    found = find_pulled(settings, name)
    if found is not None:
        return BaseModelState(True, True, f"{name}: downloaded ({size(found.bytes)}, {found.path})")
    if not ask_hub:
        return BaseModelState(True, False, f"{name}: not downloaded yet; the first training downloads it")
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    commit = probe(name, REVISION, attempts=1, timeout=STATUS_TIMEOUT)
    try:
        tree = HfApi().list_repo_tree(name, recursive=True, revision=commit)
        sizes = {f.path: int(f.size or 0) for f in tree if isinstance(f, RepoFile)}
    except Exception:  # the size is a nicety; the hub answered a moment ago
        return BaseModelState(True, False, f"{name}: will be downloaded on first training")
    total = sum(sizes[f] for f in select_files(sizes))
    return BaseModelState(
        True,
        False,
        f"{name}: will be downloaded on first training (about {size(total)}; "
        f"`dreambot model pull` fetches it now)",
    )


def hub_reachable(settings: Settings) -> tuple[bool, str]:
    """Whether the model hub answers about the base model (or, for a model that is not a
    hub id, about nothing in particular: then it does not matter)."""
    from gpu_worker.hub_models import HubUnreachable, endpoint

    name = settings.base_model
    if model_kind(name) != "hub":
        return True, f"not needed (DREAMBOT_BASE_MODEL is not a hub id); hub: {endpoint()}"
    try:
        probe(name, REVISION, attempts=1, timeout=STATUS_TIMEOUT)
    except HubUnreachable as exc:
        return False, f"cannot reach the model hub {endpoint()} ({exc.why})"
    except UserFacingError as exc:  # it answered: gated, missing
        return True, f"{endpoint()} answers, but: {exc}"
    return True, f"{endpoint()} answers"
