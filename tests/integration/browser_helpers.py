"""A real browser for the integration tests: Debian's Chromium driven by Playwright, headless.

``dvc plots show`` writes an HTML page that loads Vega, Vega-Lite and Vega-Embed from a CDN, which
an offline machine cannot reach: :func:`offline_scripts` fetches exactly the versions the page names
from the npm registry once (``npm pack``, cached in ~/.cache/cc-tuning/npm) and the page is served
them in place of the CDN, so it renders as it does on a connected laptop.

    apt-get install -y chromium          # as root; scripts/setup.sh does it when missing
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/((?:@[\w.-]+/)?[\w.-]+)@([\w.-]+)")


def chromium() -> Path:
    found = CHROMIUM if CHROMIUM.is_file() else (Path(p) if (p := shutil.which("chromium")) else None)
    if found is None:
        pytest.skip("chromium not found (/usr/bin/chromium): install it with `apt-get install -y chromium` "
                    "(scripts/setup.sh does when run as root)")
    return found


def offline_scripts(html: str) -> dict[str, bytes]:
    """``{CDN url: script}`` for every ``cdn.jsdelivr.net/npm/NAME@VERSION`` script ``html`` loads: the
    file jsDelivr serves for that URL (the package's ``jsdelivr``/``unpkg``/``main`` entry)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found: needed once to fetch the Vega scripts dvc's plots page loads")
    cache = Path(os.environ.get("CC_TUNING_CACHE", Path.home() / ".cache" / "cc-tuning")) / "npm"
    cache.mkdir(parents=True, exist_ok=True)
    scripts = {}
    for match in CDN.finditer(html):
        name, version = match.groups()
        tarball = cache / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        if not tarball.is_file():
            done = subprocess.run([npm, "pack", f"{name}@{version}", "--silent"], cwd=cache, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0 and tarball.is_file(), f"npm pack {name}@{version}: {done.stderr[-2000:]}"
        with tarfile.open(tarball) as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            entry = meta.get("jsdelivr") or meta.get("unpkg") or meta.get("main")
            scripts[match.group(0)] = tar.extractfile(f"package/{entry.removeprefix('./')}").read()
    return scripts


def launch(playwright):
    return playwright.chromium.launch(executable_path=str(chromium()), headless=True, args=CHROMIUM_ARGS)


def serve_offline(page, html: str) -> None:
    """Answer ``page``'s requests for the CDN scripts ``html`` loads with :func:`offline_scripts`."""
    for url, body in offline_scripts(html).items():
        def fulfill(route, request, body=body):
            route.fulfill(body=body, content_type="application/javascript")
        page.route(url, fulfill)
