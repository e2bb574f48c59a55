"""flows/s3_errors.py: what to check when DVC failed on an S3 remote (the words; the real server's
answers are in tests/integration/test_services.py and test_cluster.py)."""

from __future__ import annotations

import socket

from flows.s3_errors import s3_reason

FORBIDDEN = ("ERROR: failed to connect to s3 (cc-tuning/dvc/files/md5) - Forbidden: An error occurred (403) "
             "when calling the HeadObject operation: Forbidden")


def _listening() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_key_names_the_variables_and_the_bucket_not_the_values():
    sock, endpoint = _listening()
    with sock:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
        reason = s3_reason("s3://cc-tuning/dvc", FORBIDDEN, env)
    assert reason == (f"the S3 server at {endpoint} refused the credentials in AWS_ACCESS_KEY_ID / "
                      "AWS_SECRET_ACCESS_KEY for bucket cc-tuning: check both (the keys of the project's user, "
                      "which may use that bucket only)")
    assert "AKIAEXAMPLE" not in reason and "s3cr3t" not in reason


def test_missing_keys_and_a_stopped_endpoint():
    sock, endpoint = _listening()
    with sock:
        missing = s3_reason("s3://cc-tuning/dvc", "ERROR: ... - Unable to locate credentials", {"AWS_ENDPOINT_URL": endpoint})
    assert missing == "no S3 credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the keys of the project's user)"
    stopped = s3_reason("s3://cc-tuning/dvc", "ERROR: failed to push data to the cloud", {"AWS_ENDPOINT_URL": endpoint})
    assert stopped.startswith(f"cannot connect to the S3 endpoint 127.0.0.1:{endpoint.rsplit(':', 1)[1]}: ")
    assert stopped.endswith("(AWS_ENDPOINT_URL)")


def test_other_remotes_and_other_errors_get_no_reason():
    assert s3_reason("/srv/dvc-remote", FORBIDDEN, {}) is None
    assert s3_reason("http://127.0.0.1:1/dvc", FORBIDDEN, {}) is None
    assert s3_reason("s3://cc-tuning/dvc", "ERROR: failed to push data to the cloud - 1 file failed", {}) is None
