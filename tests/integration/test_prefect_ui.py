"""The Prefect UI as a user meets it, in a real browser (Debian's Chromium driven by Playwright,
headless): the cluster's Prefect server as docker/compose.yaml runs it (tests/integration/services.py:
PostgreSQL, the auth string, CSRF protection), the `local-tiny` deployment from prefect.yaml (made
cheap: only the `prepare` stage), a process worker. The UI asks for the auth string first; the
deployment's Parameters tab lists the flow's parameters one by one with their descriptions; Run →
Custom run with one parameter changed in the form starts a run (one click on Submit), which completes
with the changed value (checked through the API): another params file, so a DVC experiment named after
the flow run, the workspace untouched.

    apt-get install -y chromium          # as root; scripts/setup.sh does it when missing
    pytest -m integration tests/integration/test_prefect_ui.py -s
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from prefect_helpers import BIN, Worker, check, copy_project

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _chromium() -> Path:
    found = CHROMIUM if CHROMIUM.is_file() else (Path(p) if (p := shutil.which("chromium")) else None)
    if found is None:
        pytest.skip("chromium not found (/usr/bin/chromium): install it with `apt-get install -y chromium` "
                    "(scripts/setup.sh does when run as root)")
    return found


SUCCESS = "scheduled to start"  # the UI's toast when the run was created


def test_custom_run_from_the_deployment_page(services, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    started = time.perf_counter()
    project = copy_project(tmp_path / "project")
    server = services.prefect
    worker = None
    shots = tmp_path / "screenshots"
    try:
        client = services.client_env()
        check([BIN / "prefect", "work-pool", "create", "local", "--type", "process", "--overwrite"], project, **client)
        # the deployment as prefect.yaml defines it, with a cheap default: one stage
        check([BIN / "prefect", "--no-prompt", "deploy", "--name", "local-tiny",
               "--params", json.dumps({"stages": ["prepare"]})], project, **client)
        worker = Worker(server, project, "local", "ui-worker", **client)
        deployment = server.post("/deployments/filter", {"deployments": {"name": {"any_": ["local-tiny"]}}})[0]

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            failures: list[str] = []  # API answers other than 2xx, shown if the test fails
            page.on("response", lambda r: failures.append(f"{r.status} {r.request.method} {r.url}: {r.text()[:500]}")
                    if r.status >= 400 and "/api/" in r.url else None)
            try:
                # the UI's login page: the auth string, as a person types it
                page.goto(f"{server.url}/deployments")
                page.get_by_placeholder("admin:pass").fill(server.auth_string)
                page.get_by_role("button", name="Login").click()
                expect(page.get_by_placeholder("admin:pass")).to_have_count(0)
                page.goto(f"{server.url}/deployments")
                page.get_by_role("link", name="local-tiny").first.click()
                expect(page).to_have_url(f"{server.url}/deployments/deployment/{deployment['id']}")

                # the Parameters tab: one row per flow parameter (not one opaque object)
                page.get_by_text("Parameters", exact=True).first.click()
                expect(page.get_by_text("16 parameters", exact=True)).to_be_visible()
                for name in ("params_file", "overrides", "methods", "stages", "launcher", "num_gpus", "num_nodes",
                             "eval_backend", "eval_langs_per_job", "job_retries", "dvc_remote", "experiment_name"):
                    expect(page.get_by_text(name, exact=True).first).to_be_visible()

                # Run → Custom run: a form field per parameter, each with its description
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_text("Custom run", exact=True).click()
                expect(page).to_have_url(re.compile(rf"/deployments/deployment/{deployment['id']}/run"))
                expect(page.get_by_text("Where evaluation runs: inprocess", exact=False)).to_be_visible()
                expect(page.get_by_text("Which stages to run, in pipeline order", exact=False)).to_be_visible()
                label = page.locator(".schema-form-property__label", has_text=re.compile(r"^params_file\b"))
                field = page.locator("div.schema-form-property").filter(has=label).locator("textarea, input").first
                expect(field).to_have_value("params.yaml")
                field.fill("params.tiny.yaml")  # the one parameter changed: a variant, i.e. a DVC experiment
                page.wait_for_load_state("networkidle")  # the form's own validation requests have answered
                page.get_by_role("button", name="Submit", exact=True).click()
                expect(page.get_by_text(SUCCESS, exact=False).first).to_be_visible()  # (the UI shows it twice)
            except BaseException as err:
                shots.mkdir(exist_ok=True)
                page.screenshot(path=str(shots / "failure.png"), full_page=True)
                # first in the message: CI shows the head of a long failure
                raise AssertionError(f"API errors: {failures}\nscreenshot: {shots / 'failure.png'}\n"
                                     f"server log: {server.log.read_text()[-3000:]}\n{err}") from err
            finally:
                browser.close()

        # the run completes, with the value typed into the form
        deadline = time.time() + 600
        runs = []
        while time.time() < deadline:
            runs = server.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
            if runs and runs[0]["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert len(runs) == 1, runs
        run_ = runs[0]
        assert run_["state"]["type"] == "COMPLETED", (run_["state"], worker.log.read_text()[-4000:])
        assert run_["parameters"]["params_file"] == "params.tiny.yaml"
        assert run_["parameters"]["stages"] == ["prepare"]  # the deployment's own value, kept
        # another params file runs as a DVC experiment named after the flow run; the workspace is untouched
        assert not (project / "data/prepared/train.jsonl").exists()
        shown = subprocess.run([BIN / "dvc", "exp", "show", "--json"], cwd=project, capture_output=True, text=True)
        assert shown.returncode == 0 and f'"{run_["name"]}"' in shown.stdout, shown.stdout[-2000:] + shown.stderr
        print(f"\nPrefect UI custom run: {time.perf_counter() - started:.0f} s")
    finally:
        if worker is not None:
            worker.stop()
