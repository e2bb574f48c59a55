"""One-time set-up of a Prefect server for cluster runs (the pipeline's ``deployment`` eval backend).

    export PREFECT_API_URL=http://<server>:4200/api
    python -m flows.cluster setup --pool gpu --result-storage s3://cc-tuning/prefect-results \\
        --endpoint-url http://127.0.0.1:9000          # MinIO of docker/compose.yaml
    python -m flows.cluster setup --pool local --result-storage /srv/shared/prefect-results

It creates the process work pool (if missing) and makes a result storage that every node can
read the server's default: evaluation jobs return their predictions and scores as persisted
flow-run results, which the pipeline run (on another node) reads back. A local path suits one
machine (or a shared filesystem); ``s3://`` needs s3fs (installed with dvc-s3) and takes the
credentials from each node's environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): the block
stores none.
"""

from __future__ import annotations

import argparse
import sys

BLOCK_NAME = "cc-tuning-results"


def ensure_work_pool(name: str) -> bool:
    """Create a process work pool ``name``; False if it exists already."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def set_result_storage(location: str, endpoint_url: str | None = None, block_name: str = BLOCK_NAME) -> str:
    """Save a file-system block for ``location`` and make it the server's default result storage."""
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    if "://" in location and not location.startswith("file://"):
        settings = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
        block = RemoteFileSystem(basepath=location, settings=settings)
        slug = f"remote-file-system/{block_name}"
    else:
        block = LocalFileSystem(basepath=location.removeprefix("file://"))
        slug = f"local-file-system/{block_name}"
    block_id = block.save(block_name, overwrite=True)
    with get_client(sync_client=True) as client:
        client.update_server_default_result_storage(block_id)
    return slug


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Set up a Prefect server for cc-tuning cluster runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create the work pool and the shared result storage")
    setup.add_argument("--pool", default="gpu", help="process work pool for pipelines and evaluation jobs")
    setup.add_argument("--result-storage", required=True,
                       help="where flow-run results go, readable from every node: a path or s3://bucket/prefix")
    setup.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO), e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    created = ensure_work_pool(args.pool)
    print(f"work pool {args.pool}: {'created' if created else 'exists'}")
    slug = set_result_storage(args.result_storage, args.endpoint_url)
    print(f"default result storage: {slug} ({args.result_storage})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
