"""The cluster's services as docker/compose.yaml runs them, on free loopback ports, for the
integration tests: PostgreSQL (the role, the `prefect` database and docker/postgres-init.sql's
`mlflow` one), an S3 server with the bucket and a project user limited to it (the MinIO of
compose, emulated by moto with IAM checks on: the same policy file, keys that work only for that
bucket), the MLflow server on PostgreSQL with its basic-auth app and artifacts proxied into S3,
and the Prefect server on PostgreSQL with the auth string, CSRF protection and CORS of
docker/prefect-server.env.

Everything is read from docker/: each service's command and environment in compose.yaml (with
``${VAR}`` filled in and compose's host names mapped to the loopback ports), the variables'
names from .env.example (each placeholder replaced by a fresh random secret), the Prefect server
settings from prefect-server.env, MLflow's auth settings from mlflow-auth.ini (its user database
moved into a temporary folder), the S3 policy from minio-policy.json and MLflow's users from
mlflow_users.py. What differs from compose, and why: PostgreSQL 15 from Debian (compose: the
16.10 image), without fsync (the data is thrown away); moto, not MinIO; `--workers 1` for MLflow
(2-core test machines).

    python tests/integration/services.py      # start them by hand: prints the clients' environment

PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user (Debian's
package creates it). :class:`Unavailable` says why the services cannot start on this machine (no
PostgreSQL binaries, no moto); the tests skip with that reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from prefect_helpers import BIN, PrefectServer, env, free_port, stop

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$\$")


class Unavailable(RuntimeError):
    """A service cannot be started on this machine (the message says what is missing)."""


# ----------------------------------------------------------------------------- reading docker/


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blank lines skipped), as compose reads an env file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` and ``$$`` (a literal ``$``)."""
    def fill(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg") or ""
        found = variables.get(name)
        if op.endswith("?") and not found:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and not found:
            return arg
        return found or ""
    return VAR.sub(fill, value)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def secrets_for_tests() -> dict[str, str]:
    """docker/.env.example's variables with every ``change-me`` replaced by a fresh random value."""
    return {name: value.replace("change-me", secrets.token_hex(16))
            for name, value in read_env_file(DOCKER / ".env.example").items()}


class Addresses:
    """Compose's ``host:port`` pairs (service names, published loopback ports) → the tests' ports."""

    def __init__(self, ports: dict[str, int]):
        self.map = {}
        for service, port in ports.items():
            published = {"postgres": 5432, "prefect-server": 4200, "mlflow": 5000, "minio": 9000}[service]
            for host in (service, "127.0.0.1", "localhost"):
                self.map[f"{host}:{published}"] = f"{'localhost' if host == 'localhost' else '127.0.0.1'}:{port}"

    def __call__(self, text: str) -> str:
        pattern = re.compile("|".join(re.escape(key) + r"(?!\d)" for key in sorted(self.map, key=len, reverse=True)))
        return pattern.sub(lambda m: self.map[m.group(0)], text)


def service_env(name: str, variables: dict[str, str], addresses: Addresses) -> dict[str, str]:
    """The environment compose gives service ``name``: its env_file(s), then ``environment``."""
    service = compose()[name]
    out: dict[str, str] = {}
    for file in service.get("env_file", []):
        out.update(read_env_file(DOCKER / file))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    out.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return {key: addresses(interpolate(value, variables)) for key, value in out.items()}


def service_command(name: str, addresses: Addresses, port: int) -> list[str]:
    """compose's command for ``name``, listening on 127.0.0.1:``port`` (compose: the container's network)."""
    import shlex

    command = compose()[name]["command"]
    words = shlex.split(command) if isinstance(command, str) else list(command)
    words = [addresses(word) for word in words]
    return _set_option(_set_option(words, "--host", "127.0.0.1"), "--port", str(port))


def _set_option(words: list[str], option: str, value: str) -> list[str]:
    if option in words:
        words[words.index(option) + 1] = value
    else:
        words += [option, value]
    return words


def wait_http(url: str, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
              timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{what}: {url} not healthy after {timeout} s")


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise Unavailable(f"PostgreSQL's {name} not found (on PATH or /usr/lib/postgresql/*/bin): "
                          "install Debian's `postgresql` (apt-get install -y postgresql; .ci/run does)")
    return str(versions[-1])


class Postgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free loopback port, set up as the
    postgres image sets up compose's: the superuser POSTGRES_USER with POSTGRES_PASSWORD (scram),
    the database POSTGRES_DB, then the init scripts compose mounts (docker/postgres-init.sql)."""

    def __init__(self, variables: dict[str, str]):
        service = compose()["postgres"]
        environment = service["environment"]
        self.user = environment["POSTGRES_USER"]
        self.password = interpolate(environment["POSTGRES_PASSWORD"], variables)
        self.database = environment["POSTGRES_DB"]
        self.init_scripts = [DOCKER / v.split(":")[0] for v in service["volumes"] if "docker-entrypoint-initdb.d" in v]
        self.bins = {name: _pg_bin(name) for name in ("initdb", "pg_ctl", "psql")}
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError as err:
                raise Unavailable("running as root and there is no `postgres` user to run PostgreSQL as") from err
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's tmp folder: as root that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="cc-tuning-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        if self.as_user:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        self._run([self.bins["initdb"], "-D", self.data, "-U", self.user, "--pwfile", pwfile,
                   "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        pwfile.unlink()
        self.start()
        self.psql("-d", "postgres", "-c", f'CREATE DATABASE "{self.database}"')
        for script in self.init_scripts:
            self.psql("-d", self.database, "-f", script)

    def _run(self, cmd, user: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*(self.as_user if user else []), *map(str, cmd)], capture_output=True, text=True,
                             timeout=120, cwd=self.root)
        if out.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return out

    def start(self) -> None:
        # no fsync: the tests throw the data away (a clean stop still writes everything)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run([self.bins["pg_ctl"], "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """``fast``: what a stopped database looks like to its clients (connections closed, then down)."""
        self._run([self.bins["pg_ctl"], "-D", self.data, "-m", mode, "-w", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def psql(self, *args) -> subprocess.CompletedProcess:
        cmd = [self.bins["psql"], "-h", "127.0.0.1", "-p", self.port, "-U", self.user, "-v", "ON_ERROR_STOP=1",
               "-qAt", *args]
        out = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PGPASSWORD": self.password})
        if out.returncode:
            raise RuntimeError(f"psql {' '.join(map(str, args))}: {out.stderr[-2000:]}")
        return out

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")  # its data is thrown away next
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- S3 (MinIO's part)


# IAM's S3 actions → the S3 API operations they allow (AWS's documented mapping). moto checks a
# request's operation name against the policy's actions (s3:HeadObject, not s3:GetObject), so the
# policy handed to it lists both; MinIO reads docker/minio-policy.json as it is.
S3_OPERATIONS = {
    "s3:ListBucket": ["s3:ListObjects", "s3:ListObjectsV2", "s3:HeadBucket"],
    "s3:GetObject": ["s3:HeadObject"],
    "s3:PutObject": ["s3:CreateMultipartUpload", "s3:UploadPart", "s3:CompleteMultipartUpload", "s3:CopyObject"],
    "s3:DeleteObject": ["s3:DeleteObjects"],
    "s3:ListBucketMultipartUploads": ["s3:ListMultipartUploads"],
    "s3:ListMultipartUploadParts": ["s3:ListParts"],
}


def moto_policy(policy: dict) -> dict:
    """``policy`` with each statement's IAM actions joined by the S3 operations they allow."""
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statements.append({**statement, "Action": actions + [op for a in actions for op in S3_OPERATIONS.get(a, [])]})
    return {**policy, "Statement": statements}


class S3Server:
    """moto's S3 server with IAM checks on (INITIAL_NO_AUTH_ACTION_COUNT): an admin user (MinIO's
    root) makes the bucket and the project user with docker/minio-policy.json, as minio-init does.
    moto makes its own keys, so the keys are the server's, not .env's values."""

    BOOTSTRAP_ACTIONS = 3  # the admin: create_user, put_user_policy, create_access_key

    def __init__(self, root: Path, bucket: str, worker_user: str):
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError as err:
            raise Unavailable(f"{err.name} is not installed: pip install -c constraints.txt -e '.[test]'") from err
        self.bucket, self.worker_user = bucket, worker_user
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = root / "s3-server.log"
        self.proc = None
        self.start()

    def start(self) -> None:
        """Start (again: an empty server, so the bucket and the users are made anew, with new keys)."""
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=env(INITIAL_NO_AUTH_ACTION_COUNT=str(self.BOOTSTRAP_ACTIONS), MOTO_IAM_LOAD_MANAGED_POLICIES="false"))
        try:
            wait_http(f"{self.endpoint}/moto-api/", "S3 server (moto)", self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        admin = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam = self.client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(admin))
        self.admin_keys = self._keys(iam, "admin")
        self.client("s3", *self.admin_keys).create_bucket(Bucket=self.bucket)
        iam = self.client("iam", *self.admin_keys)
        iam.create_user(UserName=self.worker_user)
        iam.put_user_policy(UserName=self.worker_user, PolicyName="cc-tuning-rw",
                            PolicyDocument=json.dumps(moto_policy(json.loads((DOCKER / "minio-policy.json").read_text()))))
        self.worker_keys = self._keys(iam, self.worker_user)

    @staticmethod
    def _keys(iam, user: str) -> tuple[str, str]:
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def client(self, service: str, key: str, secret: str):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        """The object keys under ``prefix`` in the bucket (read with the admin's keys)."""
        s3, keys = self.client("s3", *self.admin_keys), []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
            self._out.close()


# ----------------------------------------------------------------------------- MLflow


class MlflowServer:
    """compose's `mlflow` command and environment; then compose's `mlflow-init` (mlflow_users.py)."""

    def __init__(self, root: Path, variables: dict[str, str], addresses: Addresses, port: int):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.root, self.log = root, root / "mlflow-server.log"
        self.variables, self.addresses = variables, addresses
        self.command = _set_option(service_command("mlflow", addresses, port), "--workers", "1")
        self.env = service_env("mlflow", variables, addresses)
        # the auth settings of compose, with the user database in a folder of the tests
        ini = (DOCKER / "mlflow-auth.ini").read_text()
        ini = re.sub(r"(?m)^database_uri\s*=.*$", f"database_uri = sqlite:///{root / 'mlflow-auth.db'}", ini)
        (root / "mlflow-auth.ini").write_text(ini)
        self.env["MLFLOW_AUTH_CONFIG_PATH"] = str(root / "mlflow-auth.ini")
        self.proc = None
        self.start()
        init = service_env("mlflow-init", variables, addresses)
        words = compose()["mlflow-init"]["command"]
        script = DOCKER / Path(words[1]).name  # the file compose mounts there
        out = subprocess.run([sys.executable, str(script), *words[2:]], env=env(**init), capture_output=True,
                             text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"mlflow_users.py: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    def start(self) -> None:
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen([str(BIN / self.command[0]), *self.command[1:]], cwd=self.root,
                                     env=env(**self.env), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_http(f"{self.url}/health", "MLflow server", self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
            if self.proc.poll() is None or self.proc.returncode:
                try:  # uvicorn's workers, if the parent did not take them along
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._out.close()


# ----------------------------------------------------------------------------- all of them


class Services:
    """Start everything (PostgreSQL, S3, MLflow, Prefect), in compose's dependency order.

    ``client_env()`` is compose's `gpu-worker` environment mapped to the loopback ports: what a
    worker, a pipeline run or `cctune register` gets (Prefect URL and auth string, MLflow URL and
    the `pipeline` user, S3 endpoint and the project user's keys)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.variables = secrets_for_tests()
        self.timings: dict[str, float] = {}
        self.postgres = self.s3 = self.mlflow = self.prefect = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _timed(self, name: str, start) -> object:
        begun = time.perf_counter()
        out = start()
        self.timings[name] = time.perf_counter() - begun
        return out

    def _start(self) -> None:
        services = compose()
        self.bucket = re.search(r"mc mb --ignore-existing \w+/([\w.-]+)", " ".join(
            services["minio-init"]["command"])).group(1)
        self.postgres = self._timed("postgres", lambda: Postgres(self.variables))
        self.s3 = self._timed("s3", lambda: S3Server(self.root, self.bucket, self.variables["MINIO_WORKER_USER"]))
        self.variables.update(MINIO_ROOT_USER=self.s3.admin_keys[0], MINIO_ROOT_PASSWORD=self.s3.admin_keys[1],
                              MINIO_WORKER_USER=self.s3.worker_keys[0], MINIO_WORKER_PASSWORD=self.s3.worker_keys[1])
        ports = {"postgres": self.postgres.port, "minio": self.s3.port, "mlflow": free_port(),
                 "prefect-server": free_port()}
        self.addresses = Addresses(ports)
        # Prefect boots (migrations on PostgreSQL) while MLflow starts
        prefect_env = service_env("prefect-server", self.variables, self.addresses)
        command = service_command("prefect-server", self.addresses, ports["prefect-server"])
        self.prefect = PrefectServer(self.root / "prefect-home", prefect_env, port=ports["prefect-server"],
                                     command=[str(BIN / command[0]), *command[1:]])
        begun = time.perf_counter()
        self.mlflow = self._timed("mlflow", lambda: MlflowServer(self.root, self.variables, self.addresses,
                                                                 ports["mlflow"]))
        self.prefect.wait_healthy()
        self.timings["prefect"] = time.perf_counter() - begun

    def client_env(self, **extra) -> dict[str, str]:
        out = service_env("gpu-worker", self.variables, self.addresses)
        out = {key: value for key, value in out.items() if value}  # HF_TOKEN empty: not set at all
        return {**out, **self.prefect.client_env(), **extra}

    def mlflow_env(self, user: str = "pipeline") -> dict[str, str]:
        """MLFLOW_TRACKING_* of an MLflow user: `pipeline`, `serving` or `admin`."""
        password = self.variables["MLFLOW_ADMIN_PASSWORD" if user == "admin" else f"MLFLOW_{user.upper()}_PASSWORD"]
        return {"MLFLOW_TRACKING_URI": self.mlflow.url, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password}

    def secrets(self) -> list[str]:
        """Every secret value handed to the services (for "no secret printed" checks)."""
        return [value for name, value in self.variables.items()
                if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", name) and value] + [self.s3.worker_keys[1],
                                                                                self.s3.admin_keys[1]]

    def stop(self) -> None:
        for name in ("prefect", "mlflow", "s3", "postgres"):
            service = getattr(self, name)
            if service is not None:
                begun = time.perf_counter()
                try:
                    service.close() if name == "postgres" else service.stop()
                except Exception as err:  # noqa: BLE001 - stop the others all the same
                    print(f"stopping {name}: {err}", file=sys.stderr)
                self.timings[f"stop {name}"] = time.perf_counter() - begun


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="cc-tuning-services-"))
    begun = time.perf_counter()
    services = Services(root)
    print(f"services up in {time.perf_counter() - begun:.0f} s ({services.timings}); logs in {root}")
    for key, value in sorted(services.client_env().items()):
        print(f"export {key}='{value}'")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
