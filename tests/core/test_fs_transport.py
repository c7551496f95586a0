"""The embedded broker's messages appear whole or not at all (core.fs_transport)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem

from core.fs_transport import TRANSPORT
from core.queue import make_celery
from core.settings import load_settings


def _channel(folder: Path, transport: Any = TRANSPORT) -> Any:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://", transport=transport, transport_options=options).default_channel


def test_a_consumer_never_sees_a_message_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = _channel(tmp_path)
    seen: list[object] = []
    rename = os.replace

    def look_then_rename(src: str, dst: str) -> None:  # the moment before the message is whole
        with pytest.raises(filesystem.Empty):
            seen.append(channel._get("jobs"))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", look_then_rename)
    channel._put("jobs", {"job_id": 7})
    monkeypatch.setattr(os, "replace", rename)
    assert seen == []
    assert channel._get("jobs") == {"job_id": 7}
    assert os.listdir(tmp_path) == []  # taken, and nothing left behind


def test_kombus_own_channel_shows_the_race_this_module_closes(tmp_path: Path) -> None:
    """Why the module exists: kombu's writer creates the file before it writes into it, and a
    reader that takes it then fails to parse it (Celery: "Unrecoverable error")."""
    (tmp_path / "1_x.jobs.msg").write_bytes(b"")  # what kombu's _put leaves for a moment
    with pytest.raises(ValueError):
        _channel(tmp_path, "filesystem")._get("jobs")


def test_celery_uses_it_for_the_filesystem_broker(tmp_path: Path) -> None:
    app = make_celery(load_settings(_env_file=None, data_dir=tmp_path))
    with app.connection_for_write() as conn:
        assert type(conn.default_channel).__module__ == "core.fs_transport"
