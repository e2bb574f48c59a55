"""cc_core.redact: every form of URI the project accepts (tracking stores, artifact stores, DVC
remotes, hub endpoints) loses its credentials and keeps the rest."""

from __future__ import annotations

import pytest

from cc_core.redact import redact, strip_userinfo

STRIPPED = [
    # MLflow tracking / registry stores
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("sqlite:////abs/path/mlflow.db", "sqlite:////abs/path/mlflow.db"),
    ("sqlite:///mlflow.db?timeout=20", "sqlite:///mlflow.db?timeout=20"),
    ("postgresql://mlflow:s3cr%40t@db.internal:5432/mlflow", "postgresql://db.internal:5432/mlflow"),
    ("postgresql+psycopg2://user:pw@host/db", "postgresql+psycopg2://host/db"),
    ("postgresql://user:p@ss@host/db", "postgresql://host/db"),  # an unencoded @ in the password
    ("postgresql://user:pa/ss?x#y@host:5432/db", "postgresql://host:5432/db"),  # unencoded / ? # too
    ("mysql+pymysql://root:hunter2@10.0.0.3:3306/mlflow?charset=utf8mb4",
     "mysql+pymysql://10.0.0.3:3306/mlflow?charset=utf8mb4"),
    ("mssql+pyodbc://sa:Passw0rd@server/db?driver=ODBC+Driver+18", "mssql+pyodbc://server/db?driver=ODBC+Driver+18"),
    ("postgresql://host/db?user=mlflow&password=pw&sslmode=require", "postgresql://host/db?user=mlflow&sslmode=require"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("http://admin:pw@127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://pipeline:tok3n@mlflow.example.org/", "https://mlflow.example.org/"),
    ("https://token@mlflow.example.org", "https://mlflow.example.org"),  # user-info without a password
    ("https://[::1]:5000/api", "https://[::1]:5000/api"),
    ("https://u:p@[::1]:5000/api", "https://[::1]:5000/api"),
    ("databricks", "databricks"),
    ("databricks://my-profile", "databricks://my-profile"),
    ("databricks://scope:prefix", "databricks://scope:prefix"),  # a secret scope's name, not a secret
    ("databricks-uc", "databricks-uc"),
    # artifact stores, DVC remotes
    ("file:///srv/mlartifacts", "file:///srv/mlartifacts"),
    ("mlflow-artifacts:/0/abc/artifacts", "mlflow-artifacts:/0/abc/artifacts"),
    ("s3://cc-tuning/dvc", "s3://cc-tuning/dvc"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@cc-tuning/dvc", "s3://cc-tuning/dvc"),
    ("gs://bucket/path", "gs://bucket/path"),
    ("https://acct.blob.core.windows.net/c/x?sv=2024-01-01&se=2026&sp=r&sig=abc%2Bdef",
     "https://acct.blob.core.windows.net/c/x?sv=2024-01-01&se=2026&sp=r"),
    ("https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=ff&X-Amz-Expires=60",
     "https://bucket.s3.amazonaws.com/k?X-Amz-Expires=60"),
    ("https://host/api?access_token=abc", "https://host/api"),
    ("https://host/api?api_key=abc#top", "https://host/api#top"),
    ("ssh://git@dvc.example.org:2222/srv/dvc", "ssh://dvc.example.org:2222/srv/dvc"),
    ("webdavs://user:pw@cloud.example.org/remote.php/dav", "webdavs://cloud.example.org/remote.php/dav"),
    ("http://host:8080/models@v2", "http://host:8080/models@v2"),  # an @ in the path is not user-info
    ("https://host/path@v2", "https://host/path@v2"),
    # plain paths
    ("/work/mlruns", "/work/mlruns"),
    ("mlartifacts", "mlartifacts"),
    ("../shared/remote", "../shared/remote"),
    ("C:\\Users\\me\\mlruns", "C:\\Users\\me\\mlruns"),
]


@pytest.mark.parametrize(("uri", "expected"), STRIPPED)
def test_strip_userinfo(uri, expected):
    assert strip_userinfo(uri) == expected
    assert strip_userinfo(expected) == expected  # idempotent


def test_strip_userinfo_leaves_non_strings_alone():
    assert strip_userinfo(None) is None


def test_redact_finds_every_uri_in_a_message():
    message = ("MLflow tracking store http://admin:pw1@10.0.0.5:5000 is unavailable: "
               "(psycopg2.OperationalError) 'postgresql://u:pw2@db/x' refused; remote (s3://K:pw3@bucket/x), "
               "signed https://h/k?sig=pw4&a=1.")
    clean = redact(message)
    for secret in ("pw1", "pw2", "pw3", "pw4", "admin", "u:"):
        assert secret not in clean, clean
    assert clean == ("MLflow tracking store http://10.0.0.5:5000 is unavailable: (psycopg2.OperationalError) "
                     "'postgresql://db/x' refused; remote (s3://bucket/x), signed https://h/k?a=1.")
    assert redact("no uri here") == "no uri here" and redact(None) is None
