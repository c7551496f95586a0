"""Whether people's photos may be sent to the configured LLM endpoint.

`DREAMBOT_LLM_SEND_PHOTOS`: `remote` sends them to any endpoint; `local-only` only to an
endpoint on this machine or a private network (a loopback or private IP address,
`localhost`, a `.local`/`.internal`/`.lan` name, or a single-label name such as a Docker
service `vllm`); `never` sends none. A photo that is not sent becomes a text placeholder
(`PLACEHOLDER`), so the model knows photos came and that it cannot see them; the photos
are still stored for training. Deciding by the URL alone (no DNS lookup) keeps the
answer the same on every host and impossible to flip by a resolver.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

from core.settings import Settings

LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")
PLACEHOLDER = (
    "[{n} photo(s) attached. Photos are not shared with you on this server, so you cannot "
    "see them: do not describe them or call describe_photos; ask the person what they show "
    "if you need to know. They are kept for training.]"
)


def is_local_endpoint(url: str) -> bool:
    """True for an endpoint on this machine or a private network, judged from the URL."""
    host = (urlparse(url).hostname or "").lower().rstrip(".")
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(LOCAL_SUFFIXES) or "." not in host
    return ip.is_loopback or ip.is_private or ip.is_link_local


def may_send_photos(settings: Settings) -> bool:
    mode = settings.llm_send_photos
    if mode == "never":
        return False
    return mode == "remote" or is_local_endpoint(settings.llm_base_url)
