"""Fail fast, with a useful message, when a hub id is used without network access."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlparse


class HubUnreachableError(RuntimeError):
    """The Hugging Face hub cannot be reached (offline machine or HF_HUB_OFFLINE=1)."""

    user_error = True  # cctune prints it as one line (cc_core.cli.is_user_error)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when HF_HUB_OFFLINE is unset and a TCP connection to the hub endpoint opens."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    # getaddrinfo has no timeout of its own and can hang on a broken resolver: bound it.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        address = pool.submit(socket.getaddrinfo, url.hostname, port, type=socket.SOCK_STREAM).result(timeout)
        with socket.create_connection(address[0][4][:2], timeout=timeout):
            return True
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


def require_hub(what: str, instead: str) -> None:
    """Raise HubUnreachableError for ``what`` with a hint on the local alternative."""
    if not hub_reachable():
        raise HubUnreachableError(
            f"cannot fetch {what}: the Hugging Face hub is unreachable from this machine "
            f"(offline, or HF_HUB_OFFLINE=1). Instead, {instead}."
        )
