"""The users of the MLflow server (basic-auth app), made or updated by its admin.

    # the service users, passwords from the environment (compose's one-shot `mlflow-init` runs this)
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
    MLFLOW_PIPELINE_PASSWORD=... MLFLOW_SERVING_PASSWORD=... python docker/mlflow_users.py services
    # a person (password read from standard input, never a command line)
    python docker/mlflow_users.py person alice < alice-password.txt

- ``pipeline``: what workers and `cctune register` log and register as. It creates the experiments
  and the registered model, so it manages them (MLflow grants MANAGE to the creator): only it and
  the admin can add versions or move ``champion``.
- ``serving``: what serving hosts load versions as; reads only (``default_permission = READ`` in
  docker/mlflow-auth.ini).
- people: read everything by default; the admin grants more per experiment or model.

Running it again updates the passwords (rotation). Nothing here prints a password.
"""

from __future__ import annotations

import argparse
import os
import sys

SERVICE_USERS = {"pipeline": "MLFLOW_PIPELINE_PASSWORD", "serving": "MLFLOW_SERVING_PASSWORD"}


def ensure_user(client, username: str, password: str) -> str:
    """Create ``username`` or set its password; 'created' or 'updated'."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_user(username)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make or update the MLflow server's users (as its admin).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("services", help="the pipeline and serving users, passwords from MLFLOW_*_PASSWORD")
    person = sub.add_parser("person", help="a person's account (read-only by default), password from stdin")
    person.add_argument("username")
    args = parser.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI") or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        parser.error("set MLFLOW_TRACKING_URI and the admin's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    if args.command == "services":
        missing = [var for var in SERVICE_USERS.values() if not os.environ.get(var)]
        if missing:
            parser.error(f"set {', '.join(missing)}")
        users = {name: os.environ[var] for name, var in SERVICE_USERS.items()}
    else:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 12:
            parser.error("the password (first line of standard input) needs at least 12 characters")
        users = {args.username: password}
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
    for name, password in users.items():
        print(f"mlflow user {name}: {ensure_user(client, name, password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
