"""`dreambot model …`: put a base model into dreambot's storage for every GPU host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Base models kept in dreambot's storage.", no_args_is_help=True)


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
