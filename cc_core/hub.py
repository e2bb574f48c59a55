"""Fail fast, with a useful message, when a hub id is used without network access."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


class HubUnreachableError(RuntimeError):
    """The Hugging Face hub cannot be reached (offline machine or HF_HUB_OFFLINE=1)."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when HF_HUB_OFFLINE is unset and a TCP connection to the hub endpoint opens."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.getaddrinfo(url.hostname, port)
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, instead: str) -> None:
    """Raise HubUnreachableError for ``what`` with a hint on the local alternative."""
    if not hub_reachable():
        raise HubUnreachableError(
            f"cannot fetch {what}: the Hugging Face hub is unreachable from this machine "
            f"(offline, or HF_HUB_OFFLINE=1). Instead, {instead}."
        )
