"""`dreambot generate` and `dreambot train`: run a job from the terminal (see bot/cli/local_jobs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import fail, settings_or_exit
from core.errors import UserFacingError
from core.job_results import TrainingResult

if TYPE_CHECKING:
    from core.photo_quality import PhotoReport


def generate(
    prompt: Annotated[str, typer.Argument(help="what to draw, e.g. 'rex on the moon'")],
    subject: Annotated[
        list[str] | None, typer.Option("--subject", help="your subject's name (repeatable)")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="number of images, 1-8")] = 4,
    seed: Annotated[int | None, typer.Option(help="seed of the first image")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale, 1-20")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps")] = None,
    out: Annotated[Path, typer.Option(help="folder for the PNG files")] = Path("."),
) -> None:
    """Generate images locally with the same code path as chat; prints the files written."""
    from bot.cli.local_jobs import cli_user, export_images, run_or_follow, subject_ids_by_name
    from core.actions.images import Generate
    from core.actions.images import generate as generate_images

    settings = settings_or_exit()
    try:
        actor = cli_user(settings)
        ids = subject_ids_by_name(settings, actor.user_id, subject or [])
        asked = {"n": n, "seed": seed, "guidance_scale": guidance, "steps": steps}
        request = Generate(
            prompt=prompt, subject_ids=ids, **{k: v for k, v in asked.items() if v is not None}
        )
        job_id = generate_images(actor, request).job_id
    except UserFacingError as exc:
        raise fail(str(exc)) from None
    from gpu_worker.sampling import run as sampling

    final = run_or_follow(settings, job_id, sampling)
    if final.status != "succeeded":
        raise fail(f"job #{job_id} {final.status}: {final.error or ''}")
    for path in export_images(settings, job_id, out):
        typer.echo(path)


def train(
    photos: Annotated[
        list[Path], typer.Argument(help="3-10 photos of one subject", exists=True, dir_okay=False)
    ],
    name: Annotated[str, typer.Option(help="what to call the subject, e.g. rex")],
    class_noun: Annotated[str, typer.Option("--class", help="what it is: dog, woman, mug")],
    method: Annotated[str | None, typer.Option(help="lora (default) or full")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: scaled with photos)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON training config", exists=True)] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override one config key: --set lora_rank=8")
    ] = None,
    consent: Annotated[
        bool, typer.Option("--consent", help="you have the right to use these photos (needed for a person)")
    ] = False,
    keep_photos: Annotated[
        bool, typer.Option("--keep-photos", help="keep the photos after training (deleted otherwise)")
    ] = False,
    out: Annotated[Path, typer.Option(help="folder for the test pictures made after training")] = Path("."),
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="train even when the photo check has something to say")
    ] = False,
) -> None:
    """Train a subject locally with the same code path as /train; prints where the model went.

    The photo check comes first: when it has something to say it prints a table of the
    photos and asks "Train anyway?" (`--yes` answers it)."""
    from bot.cli.local_jobs import cli_user, export_images, run_or_follow
    from core.actions.subjects import Train
    from core.actions.subjects import train as train_subject
    from core.names import subject_names
    from core.subjects import ConsentRequired, PhotosNeedConfirmation
    from core.train_config import build_config, load_config_file, parse_set
    from core.uploads import UploadBudget

    settings = settings_or_exit()
    try:
        name, class_noun = subject_names(name, class_noun)  # before any photo is read
        UploadBudget().check_declared([(p.name, p.stat().st_size) for p in photos])
        overrides: dict[str, object] = dict(load_config_file(config)) if config is not None else {}
        overrides.update(parse_set(set_ or []))
        overrides.update({k: v for k, v in {"method": method, "steps": steps}.items() if v is not None})
        build_config(deployment_file=settings.train_config, overrides=overrides)  # refuse bad keys now
        request = Train(
            name=name,
            class_noun=class_noun,
            photos=[(p.read_bytes(), p.name) for p in photos],
            config=overrides or None,
            consent=consent,
            keep_photos=keep_photos,
            confirmed=yes,
        )
        try:
            started = train_subject(cli_user(settings), request)
        except PhotosNeedConfirmation as asked:
            typer.echo(photo_table(asked.report))
            if not typer.confirm("Train anyway?", default=False):
                raise fail("Nothing was trained.") from None
            started = train_subject(cli_user(settings), request.model_copy(update={"confirmed": True}))
    except ConsentRequired as exc:  # its text speaks of chat; here the answer is a flag
        raise fail(f"{exc}\nIf that's true, run the same command again with --consent.") from None
    except UserFacingError as exc:
        raise fail(str(exc)) from None
    from gpu_worker.training import run as training

    final = run_or_follow(settings, started.job_id, training)
    if final.status != "succeeded":
        raise fail(f"training #{started.job_id} {final.status}: {final.error or ''}")
    result = TrainingResult.read(final.result)
    typer.echo(f"{name} ({started.token} {class_noun}) is ready: {result.artifact_key}")
    for path in export_images(settings, started.job_id, out):  # the validation pictures
        typer.echo(path)


def photo_table(report: PhotoReport) -> str:
    """The photo check as a table: one row a photo, then the summary."""
    rows = [("#", "photo", "verdict", "sharpness", "faces", "crop px", "")]
    for p in report.photos:
        faces = "" if p.faces is None else str(p.faces)
        sharp = f"{p.relative_sharpness:.2f}×"
        rows.append((str(p.index + 1), p.filename, p.verdict, sharp, faces, str(p.crop_side), p.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)) + "  " + row[6]
        for row in rows
    ]
    return "\n".join([*lines, "", report.summary])
