"""The production-shaped services (tests/integration/services.py), started once for the session."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """PostgreSQL, the S3 server, MLflow and Prefect as docker/compose.yaml runs them, on loopback
    ports; skipped (with the reason) where PostgreSQL or moto is not installed."""
    from services import Services, Unavailable

    started = time.perf_counter()
    try:
        running = Services(tmp_path_factory.mktemp("services"))
    except Unavailable as err:
        pytest.skip(f"the cluster's services cannot start here: {err}")
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in running.timings.items())
    print(f"\nservices fixture: up in {time.perf_counter() - started:.0f} s ({timings})")
    yield running
    stopping = time.perf_counter()
    running.stop()
    stops = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in running.timings.items() if name.startswith("stop"))
    print(f"\nservices fixture: stopped in {time.perf_counter() - stopping:.0f} s ({stops})")
