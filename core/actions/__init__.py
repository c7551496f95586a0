"""Actions: one function for each thing a person or an admin can do.

An action is the single entry point every surface calls — the agent's tools, chat
commands and buttons, the dashboard, the CLI. It checks who may do it (ownership,
`ownership.py`) once, acts through `core`, and returns a typed result; it knows nothing of
HTTP, chat platforms or the LLM, so each surface only turns its input into the action's
arguments and the result into its own view. A person's actions take the `Actor` who acts
(`actor.py`); an admin's take the settings. Refusals are `core.errors.UserFacingError`s.

Modules by noun: `people` (who, block, quotas, usage), `subjects` (train, list, the photo
coach, delete), `forgetting` (/forget and an admin's forget), `images` (generate, vary,
upscale, reroll, delete a result), `reports` (report an image, an admin's review), `jobs`
(status, cancel, retry).
"""
