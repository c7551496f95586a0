"""A training job's parameters (`job.params` of a `train` job), one declared shape.

Written by `core.subjects.start_training` as `{"subject_kind": …, "config": {…}}`; read
by the worker (`gpu_worker/training/job.py`). Rows stored earlier may carry training
settings at the top level ({"steps": 400}) as well as under "config": the validator folds
them under "config", where "config"'s own values win, as they always did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from core.train_config import SubjectKind, TrainConfig, TrainConfigError, describe_errors


class TrainRequest(BaseModel):
    # Unknown top-level keys were always ignored (the worker picked what it knew).
    model_config = ConfigDict(extra="ignore")

    subject_id: int | None = None  # default: the job's first subject
    subject_kind: SubjectKind | None = None  # picks the preset; "config" may override it
    config: dict[str, Any] = {}  # TrainConfig overrides, checked when the config is built

    @model_validator(mode="before")
    @classmethod
    def _settings_at_top_level(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        top = {k: v for k, v in data.items() if k in TrainConfig.model_fields and k != "subject_kind"}
        rest = {k: v for k, v in data.items() if k not in top}
        return {**rest, "config": {**top, **(data.get("config") or {})}}  # "config": null read as none

    def overrides(self) -> dict[str, Any]:
        """The TrainConfig overrides this job asks for ("config" wins over `subject_kind`)."""
        return {**({"subject_kind": self.subject_kind} if self.subject_kind else {}), **self.config}

    def to_params(self) -> dict[str, Any]:
        """What `job.params` stores: only what was asked for."""
        return self.model_dump(mode="json", exclude_defaults=True)


def parse_train_request(params: Mapping[str, Any]) -> TrainRequest:
    """`params` as a `TrainRequest`, or a `TrainConfigError` saying what is wrong."""
    try:
        return TrainRequest.model_validate(dict(params))
    except ValidationError as exc:
        raise TrainConfigError(f"bad training config: {describe_errors(exc)}") from None
