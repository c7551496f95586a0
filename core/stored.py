"""`StoredMessage`: a pydantic model one process writes into a JSON column and others read.

Writers build the model (unknown fields are refused, so a typo fails at once) and store
`to_json()`. Readers call `read(raw)`, which takes rows of any age as the readers before
these models did: unknown keys are ignored, and a field whose stored value no longer fits
is dropped back to its default rather than failing the page, card or metric that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError


class StoredMessage(BaseModel):
    """Every field has a default, so a row missing a key still reads."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """What the column stores: plain JSON values, fields left as None omitted."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def read(cls, raw: Mapping[str, Any] | None) -> Self:
        """The stored `raw` as this model, tolerating old or damaged rows (see the module doc)."""
        data = {k: v for k, v in (raw or {}).items() if k in cls.model_fields}
        while True:
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & data.keys()
                if not bad:
                    raise
                for key in bad:
                    del data[key]
