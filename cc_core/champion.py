"""The alias policy of the Model Registry, and its order: which version is ``challenger`` and which is
``champion``, decided one registration at a time, in the order of registration.

    version = client.create_model_version(name, uri, tags={**tags, **pending_tags()}).version
    champion, promoted = settle(client, name, version, decide, on_settled)   # one at a time, in version order

Policy: the new version gets ``challenger``; ``champion`` moves to it only when its ``register.metric``
is strictly greater than the current champion's (a tie keeps the champion; values are stored exactly,
as ``repr(float)``), and only when both were evaluated the same way (same ``eval_settings_sha256``,
``eval_data_sha256``, ``scorer_sha256``) and completely (no failed languages); a score from another
evaluation is not comparable and the version is tagged ``not_compared``. MLflow keeps no alias history,
so every move is appended to the registered model's ``alias_history`` tag.

Order (concurrent registrations). The store numbers versions atomically, but moving the aliases and
appending to ``alias_history`` are read-modify-writes of the registered model: two ``cctune register``
at once lost a move (``challenger`` on 2 while 3 existed, no history entry for 3). Each version is
therefore created with the tag ``alias_state=pending`` (in the same write as the version), and its
registration decides its aliases only once the version before it is no longer pending, then marks it
``settled``. The lock is the store itself, so it holds for a SQLite file and a tracking server alike,
and the aliases and history follow the version numbers, i.e. the order of registration. A predecessor
whose process died (same host, its pid gone) or that stays pending past ``SETTLE_WAIT_S`` is marked
``abandoned`` (no alias) and the next one goes on. Versions registered before this scheme carry no
``alias_state`` and count as settled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable

from mlflow.exceptions import MlflowException

from cc_core.lineage import short

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
NOT_COMPARABLE = "not comparable with version"
STATE, OWNER = "alias_state", "registered_by"  # version tags: pending | settled | abandoned; host:pid
SETTLE_WAIT_S = 300.0  # how long a pending predecessor on another host is waited for
POLL_S = 0.25


# --- the policy -----------------------------------------------------------------------------------

def metric_tags(value: float) -> dict[str, str]:
    """The version's score, stored exactly (``repr`` round-trips a float) so that it compares equal to itself."""
    return {"metric_value": repr(float(value)), "metric_value_format": "repr"}


def compared_text(a: float, b: float) -> tuple[str, str]:
    """Both values as text, with enough digits to tell them apart."""
    short_a, short_b = f"{a:.4f}", f"{b:.4f}"
    return (short_a, short_b) if short_a != short_b or a == b else (repr(a), repr(b))


def incomparable(tags: dict, metric: str, settings_hash: str, evidence: dict[str, str]) -> str | None:
    """Why the champion's score cannot be compared with this one (None: it can)."""
    if tags.get("register_metric", metric) != metric:
        return f"metric {tags.get('register_metric')} vs {metric}"
    if tags.get("eval_settings_sha256", settings_hash) != settings_hash:
        return "other eval settings"
    for key, what in (("eval_data_sha256", "evaluation data"), ("scorer_sha256", "scoring code or protocol")):
        theirs, ours = tags.get(key, "none"), evidence[key]
        if theirs == "none" or ours == "none" or theirs != ours:
            return f"{what} differs: {key} {short(theirs)} (champion) vs {short(ours)} (this version)"
    return None


def should_promote(client, name: str, champion: str | None, value: float, metric: str, settings_hash: str,
                   failed: dict, evidence: dict[str, str]) -> tuple[bool, str]:
    """(move champion?, why) under the alias policy in the module docstring."""
    if failed:
        return False, f"incomplete evaluation (failed languages: {failed})"
    if champion is None:
        return True, "first version"
    tags = client.get_model_version(name, champion).tags
    why = incomparable(tags, metric, settings_hash, evidence)
    if why:
        return False, (f"{NOT_COMPARABLE} {champion}: {why}; the champion stays (re-evaluate it on the same data "
                       "and register it again, or move the alias by hand: docs/user-guide.md)")
    stored = tags.get("metric_value")
    if stored is None:
        champion_value = -math.inf
    else:
        champion_value = float(stored)
        if tags.get("metric_value_format") != "repr":
            # written by an older version as f"{v:.6f}": compare the new value in that same representation
            value = float(f"{value:.6f}")
    new, old = compared_text(value, champion_value)
    if value > champion_value:
        return True, f"{new} > {old}"
    if value == champion_value:
        return False, f"{new} ties {old} (version {champion}): a tie keeps the champion"
    return False, f"{new} does not beat {old}"


def alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)  # an int from a SQL store
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        return None


def alias_history(client, name: str) -> list[dict]:
    return json.loads(client.get_registered_model(name).tags.get("alias_history", "[]"))


def record_alias(client, name: str, alias: str, version: str, previous: str | None, reason: str) -> None:
    """Move ``alias`` and append the move to ``alias_history`` (call only inside ``settle``: a read-modify-write)."""
    history = alias_history(client, name)
    history.append({"alias": alias, "version": str(version), "previous": None if previous is None else str(previous),
                    "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, "alias_history", json.dumps(history))


# --- the order ------------------------------------------------------------------------------------

def pending_tags() -> dict[str, str]:
    """Tags a new version is created with: its aliases are not decided yet, and who decides them."""
    return {STATE: "pending", OWNER: f"{socket.gethostname()}:{os.getpid()}"}


def _owner_gone(owner: str | None) -> bool:
    """True when the registering process is known to be dead (same host, no such pid)."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _previous_version(client, name: str, version: int):
    """The newest existing version below ``version`` (None: there is none)."""
    for number in range(version - 1, 0, -1):
        try:
            return client.get_model_version(name, str(number))
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
    return None


def wait_for_turn(client, name: str, version: str, wait_s: float = SETTLE_WAIT_S) -> None:
    """Return once no version before ``version`` is pending: each earlier registration has decided its
    aliases (or was abandoned: its process died, or it stayed pending past ``wait_s``)."""
    number, started, said = int(version), time.monotonic(), False
    while True:
        previous = _previous_version(client, name, number)
        if previous is None or previous.tags.get(STATE) != "pending":
            return  # settled (its own predecessors were settled before it), abandoned, or from before this scheme
        owner = previous.tags.get(OWNER)
        if _owner_gone(owner) or time.monotonic() - started > wait_s:
            log.warning("version %s of %s is still pending (registered by %s, which %s): marked abandoned, without "
                        "aliases", previous.version, name, owner,
                        "is gone" if _owner_gone(owner) else f"did not finish within {wait_s:g} s")
            client.set_model_version_tag(name, previous.version, STATE, "abandoned")
            number = int(previous.version)  # its own predecessors may still be pending
            continue
        if not said:
            log.info("version %s of %s waits for version %s to decide its aliases", version, name, previous.version)
            said = True
        time.sleep(POLL_S)


def settle(client, name: str, version: str, decide: Callable[[str | None], tuple[bool, str]],
           on_settled: Callable[[str], None] | None = None) -> tuple[str | None, bool, str]:
    """In the order of registration: ``challenger`` → ``version``, then ``champion`` → ``version`` when
    ``decide(current champion)`` says so, then ``on_settled(champion)`` (e.g. writing metrics/register.json,
    so the last writer is the last version), then the version is marked settled. Returns (champion,
    promoted, why)."""
    version = str(version)
    wait_for_turn(client, name, version)
    try:
        record_alias(client, name, CHALLENGER, version, alias_version(client, name, CHALLENGER), "new version")
        champion = alias_version(client, name, CHAMPION)
        promoted, reason = decide(champion)
        if promoted:
            record_alias(client, name, CHAMPION, version, champion, reason)
            champion = version
        else:
            if reason.startswith(NOT_COMPARABLE):
                client.set_model_version_tag(name, version, "not_compared", reason)
            log.info("champion stays at version %s: %s", champion, reason)
        if on_settled is not None:
            on_settled(champion)
    except BaseException:
        # a process that lives on (a flow running register in-process) must not hold up the next versions
        try:
            client.set_model_version_tag(name, version, STATE, "abandoned")
        except Exception:  # noqa: BLE001 - the store failing is what is being reported already
            pass
        raise
    client.set_model_version_tag(name, version, STATE, "settled")
    return champion, promoted, reason
