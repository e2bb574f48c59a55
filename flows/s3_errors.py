"""Why a DVC remote on S3 (MinIO) failed, in words a user can act on.

DVC reports a refused key as ``Forbidden: An error occurred (403) when calling the HeadObject
operation`` (a HEAD answer has no body to say more) and a stopped server as missing files or
retries; :func:`s3_reason` names what to check (the endpoint, or the credential variables: never
their values).

    s3_reason("s3://cc-tuning/dvc", dvc_error_text)   # None for other remotes or other errors
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from urllib.parse import urlparse

CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
_MISSING = ("Unable to locate credentials", "NoCredentialsError", "PartialCredentialsError")
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Access Denied", "Forbidden",
            "(403)", "InvalidToken")


def endpoint(environ: Mapping[str, str] = os.environ) -> str | None:
    """The S3 endpoint the clients use (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), if one is set."""
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why the endpoint ``url`` cannot be reached (connection refused, no route), or None."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot connect to the S3 endpoint {parsed.hostname}:{port}: {err.strerror or err}"


def s3_reason(remote_url: str, dvc_error: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """What to check when DVC failed on the S3 remote ``remote_url``; None if it is not S3 or the
    error says nothing about the endpoint or the credentials."""
    if not remote_url.startswith("s3://"):
        return None
    bucket = urlparse(remote_url).netloc
    server = endpoint(environ)
    if server and (why := unreachable(server)):
        return f"{why} (AWS_ENDPOINT_URL)"
    if any(marker in dvc_error for marker in _MISSING):
        return f"no S3 credentials: set {CREDENTIAL_VARS} (the keys of the project's user)"
    if any(marker in dvc_error for marker in _REFUSED):
        where = f"the S3 server at {server}" if server else "S3"
        return (f"{where} refused the credentials in {CREDENTIAL_VARS} for bucket {bucket}: check both "
                "(the keys of the project's user, which may use that bucket only)")
    return None
