"""The slash commands dreambot registers, as thin declarations over the adapter.

Each callback's first act (inside the adapter) is deferring the interaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands

if TYPE_CHECKING:
    from bot.platforms.discord.adapter import DiscordAdapter

Photo = discord.Attachment | None


def register(tree: app_commands.CommandTree, adapter: DiscordAdapter) -> None:
    @tree.command(name="train", description="Teach dreambot a subject from 3–10 photos of it")
    @app_commands.rename(class_noun="class")
    @app_commands.describe(
        name="what to call it, e.g. Rex",
        photo1="a sharp photo of the subject (add 3–10 in all; none: a form to drop them all at once)",
        class_noun="what it is: dog, cat, person, mug… (default: object)",
        consent="I have the right to use these photos of this person (needed for photos of people)",
        keep_photos="keep the photos after training (otherwise they are deleted once the model is ready)",
    )
    async def train(
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 40],
        class_noun: app_commands.Range[str, 0, 40] = "",
        photo1: Photo = None,
        photo2: Photo = None,
        photo3: Photo = None,
        photo4: Photo = None,
        photo5: Photo = None,
        photo6: Photo = None,
        photo7: Photo = None,
        photo8: Photo = None,
        photo9: Photo = None,
        photo10: Photo = None,
        consent: bool = False,
        keep_photos: bool = False,
    ) -> None:
        given = [photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9, photo10]
        photos = [p for p in given if p is not None]
        if not photos:  # no photo options: a form where all photos can be dropped at once
            await interaction.response.send_modal(TrainForm(adapter, name, class_noun, consent, keep_photos))
            return
        await adapter.train(interaction, name, class_noun, photos, consent=consent, keep_photos=keep_photos)

    @tree.command(name="imagine", description="Generate pictures; name your trained subjects in the prompt")
    @app_commands.describe(prompt="e.g. Rex as an astronaut on the moon", n="how many pictures")
    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 800],
        n: app_commands.Range[int, 1, 8] = 4,
    ) -> None:
        await adapter.imagine(interaction, prompt, n)

    @tree.command(name="models", description="Your trained subjects")
    async def models(interaction: discord.Interaction) -> None:
        await adapter.simple(interaction, "models")

    @tree.command(name="jobs", description="Your recent jobs")
    async def jobs(interaction: discord.Interaction) -> None:
        await adapter.simple(interaction, "jobs")

    @tree.command(name="cancel", description="Cancel one of your jobs")
    @app_commands.describe(job="the job number, e.g. 12")
    async def cancel(interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        await adapter.simple(interaction, "cancel", job)

    @tree.command(name="quota", description="What you can still do today")
    async def quota(interaction: discord.Interaction) -> None:
        await adapter.simple(interaction, "quota")

    @tree.command(name="forget", description="Delete one subject, or everything dreambot keeps about you")
    @app_commands.describe(subject="the subject's name, e.g. Rex (leave empty: everything of yours)")
    async def forget(
        interaction: discord.Interaction, subject: app_commands.Range[str, 1, 40] | None = None
    ) -> None:
        await adapter.simple(interaction, "forget", subject)


class TrainForm(discord.ui.Modal, title="Train a subject"):
    """/train without photo options: name, class and a file upload of up to 10 photos.

    The open form lives in discord.py's memory (15 minutes): after a restart its submit
    fails and the person runs /train again.
    """

    def __init__(
        self, adapter: DiscordAdapter, name: str, class_noun: str, consent: bool, keep_photos: bool
    ) -> None:
        super().__init__(timeout=15 * 60, custom_id="db:train-form")
        self.adapter = adapter
        self.consent, self.keep_photos = consent, keep_photos
        self.name: discord.ui.TextInput[TrainForm] = discord.ui.TextInput(default=name, max_length=40)
        self.class_noun: discord.ui.TextInput[TrainForm] = discord.ui.TextInput(
            default=class_noun or None, required=False, max_length=40
        )
        self.photos: discord.ui.FileUpload[TrainForm] = discord.ui.FileUpload(
            custom_id="photos", min_values=1, max_values=10
        )
        self.add_item(discord.ui.Label(text="Name", component=self.name))
        self.add_item(
            discord.ui.Label(text="What is it? (dog, cat, person, mug…)", component=self.class_noun)
        )
        self.add_item(discord.ui.Label(text="3–10 sharp photos", component=self.photos))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.adapter.train(
            interaction,
            self.name.value,
            self.class_noun.value,
            list(self.photos.values),
            consent=self.consent,
            keep_photos=self.keep_photos,
        )


@dataclass(frozen=True)
class HeldTraining:
    """A /train's arguments, held under the buttons of its answer."""

    name: str
    class_noun: str
    photos: list[discord.Attachment]
    consent: bool
    keep_photos: bool


class _UploaderView(discord.ui.View):
    """Buttons under a /train answer that hold its photos (the attachments, in discord.py's
    memory, for 15 minutes, like an open TrainForm; after a restart the buttons do nothing
    and the person runs /train again) and answer only the uploader's presses. Pressing
    one that trains is a new interaction (the answered one's event id is spent)."""

    def __init__(self, adapter: DiscordAdapter, owner_id: int, held: HeldTraining) -> None:
        super().__init__(timeout=15 * 60)
        self.adapter, self.owner_id, self.held = adapter, owner_id, held

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id  # only the uploader decides

    async def _train(self, interaction: discord.Interaction, *, consent: bool, confirmed: bool) -> None:
        self.stop()  # one training per answer, even when pressed twice
        held = self.held
        await self.adapter.train(
            interaction,
            held.name,
            held.class_noun,
            held.photos,
            consent=consent,
            keep_photos=held.keep_photos,
            confirmed=confirmed,
        )


class ConsentView(_UploaderView):
    """The "I confirm" button under a /train refused for want of consent (photos of a
    person): pressing it trains the same photos with consent. Its custom_id is not "db:…",
    so the adapter's button handler leaves it to this view."""

    def __init__(self, adapter: DiscordAdapter, owner_id: int, held: HeldTraining) -> None:
        super().__init__(adapter, owner_id, held)
        confirm: discord.ui.Button[ConsentView] = discord.ui.Button(
            label="I confirm — train",
            style=discord.ButtonStyle.primary,
            custom_id=f"consent:{uuid.uuid4().hex}",
        )
        confirm.callback = self._confirmed  # type: ignore[method-assign]
        self.add_item(confirm)

    async def _confirmed(self, interaction: discord.Interaction) -> None:
        await self._train(interaction, consent=True, confirmed=False)


class PhotoCheckView(_UploaderView):
    """ "Train anyway" / "Cancel" under the photo coach's question (/train's photos have
    something to point out; nothing was created): "Train anyway" trains them with
    `confirmed=True`, "Cancel" closes the question."""

    def __init__(self, adapter: DiscordAdapter, owner_id: int, held: HeldTraining) -> None:
        super().__init__(adapter, owner_id, held)
        key = uuid.uuid4().hex
        for label, style, callback in (
            ("Train anyway", discord.ButtonStyle.primary, self._anyway),
            ("Cancel", discord.ButtonStyle.secondary, self._cancel),
        ):
            button: discord.ui.Button[PhotoCheckView] = discord.ui.Button(
                label=label, style=style, custom_id=f"photos:{label.split()[0].lower()}:{key}"
            )
            button.callback = callback  # type: ignore[method-assign]
            self.add_item(button)

    async def _anyway(self, interaction: discord.Interaction) -> None:
        await self._train(interaction, consent=self.held.consent, confirmed=True)

    async def _cancel(self, interaction: discord.Interaction) -> None:
        self.stop()
        await interaction.response.edit_message(content=CANCELLED, view=None)


CANCELLED = "Cancelled: nothing was trained. Run /train again with other photos whenever you like."
