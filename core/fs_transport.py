"""Celery's filesystem transport with atomic writes: the embedded default broker.

kombu's filesystem channel creates a message file and then writes into it, while a
consumer moves and reads any file with the queue's name without waiting: one that lands
between the two reads an empty file, its JSON fails to parse, Celery calls that an
"Unrecoverable error" and the worker exits, taking the message with it. Here a message is
written under a name consumers skip (a leading dot, a `.part` suffix) and renamed into
place once whole; a rename within one folder is atomic, so a consumer sees all of a
message or none of it (a writer killed mid-write leaves a `.part` file that nothing reads).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "core.fs_transport:Transport"  # for Celery's broker_transport setting


class Channel(filesystem.Channel):
    # kombu's own classes disagree on the name (AbstractChannel: message; filesystem: payload).
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming and order
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
