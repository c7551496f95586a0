"""`dreambot model …`: fetch a base model ahead of time, or put one into dreambot's storage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(
    help="Base models: download one ahead of time, or publish one to storage.", no_args_is_help=True
)


@model_app.command("pull")
def pull(
    model: Annotated[
        str | None,
        typer.Argument(
            help="a hub id, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5",
            show_default="DREAMBOT_BASE_MODEL",
        ),
    ] = None,
) -> None:
    """Download a base model into this host's model cache now, with a progress bar, so the
    first training does not wait for it (a second pull downloads nothing)."""
    from tqdm import tqdm

    from core.errors import DreambotError
    from core.settings import SettingsError, load_settings
    from gpu_worker import hub_models, model_fetch

    bar: tqdm | None = None

    def show(d: hub_models.Download) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=d.total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=True)
        bar.update(d.done - bar.n)

    try:
        settings = load_settings()
        name = model or settings.base_model
        kind = model_fetch.model_kind(name)
        if kind != "hub":
            path = model_fetch.local_base_model(name, settings)  # a storage model: copied once
            typer.echo(f"{name} is {'a local folder' if kind == 'folder' else 'on this host'}: {path}")
            return
        got = hub_models.pull(settings, name, on_progress=show)
    except (DreambotError, SettingsError, OSError) as exc:
        typer.secho(f"dreambot: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        if bar is not None:
            bar.close()
    what = "downloaded" if got.downloaded else "already here, nothing downloaded"
    typer.echo(
        f"{name}: {tqdm.format_sizeof(got.bytes, 'B')} in {got.path} ({what})\n"
        f"workers on this host use it now; for a host without the hub: DREAMBOT_BASE_MODEL={got.path}, "
        f"or dreambot model publish {got.path} --as models/NAME"
    )


@model_app.command("publish")
def publish(
    folder: Annotated[
        Path, typer.Argument(help="a diffusers model folder (with model_index.json)", show_default=False)
    ],
    as_: Annotated[
        str, typer.Option("--as", help="storage key prefix, e.g. models/sd15", show_default=False)
    ],
) -> None:
    """Upload FOLDER to storage with a sha256 manifest; workers then use BASE_MODEL=storage:PREFIX."""
    from core.errors import DreambotError
    from core.settings import SettingsError, load_settings
    from gpu_worker.model_cache import key_prefix, publish_base_model

    try:
        settings = load_settings()
        prefix = key_prefix(as_)
        manifest = publish_base_model(
            settings, folder, prefix, on_file=lambda rel, size: typer.echo(f"  {rel} ({size:,} bytes)")
        )
    except (DreambotError, SettingsError, OSError) as exc:
        typer.secho(f"dreambot: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"published {len(manifest.files)} files ({manifest.total_bytes:,} bytes) as storage:{prefix}\n"
        f"use it with DREAMBOT_BASE_MODEL=storage:{prefix} (each GPU host copies it once)"
    )
