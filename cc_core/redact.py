"""Credentials never written down: URIs lose their user-info and secret query values before they
are logged, tagged, printed or saved.

    strip_userinfo("postgresql://user:pw@db:5432/mlflow")      # -> "postgresql://db:5432/mlflow"
    strip_userinfo("https://acct.blob.core.windows.net/c?sv=1&sig=abc")   # -> "...?sv=1"
    redact("cannot reach http://admin:pw@10.0.0.5:5000/api")  # -> "cannot reach http://10.0.0.5:5000/api"

Only what is shown or stored goes through these; connecting still uses the URI as given.
Anything that is not a ``scheme://`` URI (a file path, ``sqlite:///x.db`` after stripping,
``databricks``, ``mlflow-artifacts:/...``) comes back unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# A query key naming any of these is a secret (password, access_token, X-Amz-Signature, sig, sslkey, ...).
SECRET_QUERY_MARKERS = ("pass", "pwd", "secret", "token", "sig", "credential", "key", "auth", "session")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.S)
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# user:password@ where the password holds an unencoded / ? or # (SQLAlchemy reads these as a password too)
_LOOSE_USERINFO = re.compile(r"^[^:/?#@]*:([^@]*)@")


def _authority_end(rest: str) -> int:
    match = re.search(r"[/?#]", rest)
    return match.start() if match else len(rest)


def _without_userinfo(rest: str) -> str:
    """``rest`` (what follows ``scheme://``) without the user-info in front of the host."""
    end = _authority_end(rest)
    if "@" in rest[:end]:
        return rest[rest.rindex("@", 0, end) + 1:]
    loose = _LOOSE_USERINFO.match(rest)
    if loose:
        port = re.match(r"[^/?#]*", loose.group(1)).group(0)
        if not port.isdigit():  # not host:port/path@...: a password that holds a / ? or #
            return rest[loose.end():]
    return rest


def _secret_key(key: str) -> bool:
    name = unquote(key).lower()
    return any(marker in name for marker in SECRET_QUERY_MARKERS)


def _without_secret_query(rest: str) -> str:
    """``rest`` with every ``key=value`` of its query whose key names a secret dropped."""
    start = rest.find("?")
    if start < 0:
        return rest
    fragment_at = rest.find("#", start)
    query = rest[start + 1:] if fragment_at < 0 else rest[start + 1:fragment_at]
    fragment = "" if fragment_at < 0 else rest[fragment_at:]
    kept = [pair for pair in re.split(r"[&;]", query) if pair and not _secret_key(pair.split("=", 1)[0])]
    return rest[:start] + ("?" + "&".join(kept) if kept else "") + fragment


def strip_userinfo(uri):
    """``uri`` without user-info (``user:password@``) and without query values whose key names a
    secret; anything that is not a ``scheme://`` URI (a path, None) is returned unchanged."""
    if not isinstance(uri, str):
        return uri
    match = _URI.match(uri)
    if not match:
        return uri
    scheme, rest = match.groups()
    return scheme + _without_secret_query(_without_userinfo(rest))


def redact(text):
    """``text`` (a message, an error, a param value) with every URI in it passed through ``strip_userinfo``."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _IN_TEXT.sub(lambda m: strip_userinfo(m.group(0)), text)
