"""The audit log: every admin action, who did it, to what, with what details."""

from __future__ import annotations

from typing import Any

from core.db import session_scope
from core.models import AuditLog
from core.settings import Settings


def record(settings: Settings, actor: str, action: str, target: str = "", **details: Any) -> None:
    """Write one audit row in its own transaction (so it survives a later failure)."""
    with session_scope(settings) as session:
        session.add(AuditLog(actor=actor[:128], action=action[:64], target=target[:128], details=details))
