"""MLflow's ``models:/`` artifact repository, saying which version lost which files.

    mlflow.pyfunc.load_model("models:/cc-tuning-smollm2-135m-instruct@champion")
    # a version whose artifact directory was deleted, before:  MlflowException: No such artifact: ''
    # now: registered model cc-tuning-... version 3 (models:/cc-tuning-...@champion): its files are
    #      missing from the artifact store: /.../mlartifacts/1/models/m-.../artifacts does not exist; ...

MLflow resolves ``models:/NAME@ALIAS`` and downloads the version's files before any code of the version
runs, so the pyfunc's own checks (cc_core/pyfunc_model.py) cannot name a directory that is gone. This
subclass of MLflow's ``ModelsArtifactRepository`` is registered for the ``models`` scheme through the
``mlflow.artifact_repository`` entry point of the cc-tuning package (pyproject.toml; MLflow loads plugins
after its built-ins, so it takes the scheme wherever cc-tuning is installed). It changes nothing but the
error of a download whose files are missing: one line naming the version, the URI asked for and the missing
location.

A package of its own, outside ``cc_core``, importing only MLflow: MLflow imports it while resolving any
``models:/`` URI, before the version's own copy of ``cc_core`` (its ``code_paths``) is put on sys.path. Were
it a ``cc_core`` module, the installed ``cc_core`` would be imported first and a served version would run
the checkout's code instead of the code it was registered with.
"""

from __future__ import annotations

import errno
import os
from urllib.parse import unquote, urlparse

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository


class ArtifactsMissingError(MlflowException):
    """A registered version (or logged model) whose files are gone from the artifact store."""


def _missing(err: BaseException) -> bool:
    """A download that failed because the files are not there (not a network or permission problem)."""
    if isinstance(err, FileNotFoundError) or getattr(err, "errno", None) == errno.ENOENT:
        return True
    text = str(err)
    return ("No such artifact" in text or "No such file or directory" in text
            or getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST")


def _location(uri: str, artifact_path: str) -> str:
    """The missing place as a path for a local store, else as a URI."""
    parsed = urlparse(uri)
    base = unquote(parsed.path) if parsed.scheme in ("", "file") else uri.rstrip("/")
    return os.path.join(base, artifact_path) if artifact_path else base


class CheckedModelsArtifactRepository(ModelsArtifactRepository):
    """``ModelsArtifactRepository`` whose missing-files error names the version and the missing path."""

    def _what(self) -> str:
        name, version = getattr(self, "model_name", None), getattr(self, "model_version", None)
        if name and version:
            return f"registered model {name} version {version} ({self.artifact_uri})"
        return f"logged model {self.artifact_uri}"

    def _gone(self, artifact_path: str, why: str) -> ArtifactsMissingError:
        where = _location(getattr(self.repo, "artifact_uri", "?"), artifact_path or "")
        return ArtifactsMissingError(f"{self._what()}: its files are missing from the artifact store: {where} {why}; "
                                     "restore them from a backup or register the checkpoint again",
                                     error_code=RESOURCE_DOES_NOT_EXIST)

    def download_artifacts(self, artifact_path, dst_path=None, lineage_header_info=None):
        try:
            local = super().download_artifacts(artifact_path, dst_path, lineage_header_info)
        except ArtifactsMissingError:
            raise
        except Exception as err:  # noqa: BLE001 - each artifact store says "missing" its own way
            if not _missing(err):
                raise
            raise self._gone(artifact_path, "does not exist") from None
        if not artifact_path and os.path.isdir(local) and not os.listdir(local):
            # a remote store lists nothing for a deleted folder: MLflow would fail later, on a missing MLmodel
            raise self._gone(artifact_path, "holds no files")
        return local
