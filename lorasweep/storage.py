"""Where a sweep's files live: a local folder or an object-store URI (``s3://``, ``gs://``), read and
written through one set of functions (in the spirit of Ray's ``StorageContext``, which carries the
filesystem with the path). Nothing else in the driver asks whether a path holds ``://``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common.errors import StorageError, os_reason


def is_remote(path: str) -> bool:
    """An object-store URI (``s3://bucket/runs``), not a local path."""
    return "://" in path


def redact(url: str) -> str:
    """A URL without the user:password@ it may carry (``postgresql://u:pw@db/optuna``,
    ``http://u:pw@mlflow:5000``): what the console, sweep_config.json and the trackers may show."""
    head, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    return f"{head}://***@{netloc.rsplit('@', 1)[1]}{slash}{tail}"


def scheme(path: str) -> str:
    """``s3`` for ``s3://bucket/runs``; "" for a local path."""
    return path.split("://", 1)[0] if is_remote(path) else ""


def with_scheme(path: str, scheme_: str) -> str:
    """Ray reports object-store paths without their scheme (``bucket/runs/...``): put it back."""
    return f"{scheme_}://{path}" if scheme_ and not is_remote(path) else path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_remote(base) else os.path.join(base, *parts)


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded; pyarrow and Ray want them so); a URI as it is."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _fs(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path)


def exists(path: str) -> bool:
    if is_remote(path):
        import pyarrow.fs as pafs

        fs, p = _fs(path)
        return fs.get_file_info(p).type != pafs.FileType.NotFound
    return os.path.exists(path)


def list_names(path: str) -> list[str]:
    """The names in a folder; [] when there is none."""
    if is_remote(path):
        import pyarrow.fs as pafs

        fs, p = _fs(path)
        return [info.base_name for info in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))]
    return os.listdir(path) if os.path.isdir(path) else []


def download(path: str, dest: str) -> None:
    """Copy the file ``path`` (local or a URI) to the local file ``dest``."""
    if is_remote(path):
        fs, p = _fs(path)
        with fs.open_input_stream(p) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 24):
                out.write(chunk)
    else:
        shutil.copy2(path, dest)


def read_text(path: str) -> str | None:
    """A file's text; None when it is missing or cannot be read."""
    try:
        if is_remote(path):
            fs, p = _fs(path)
            with fs.open_input_stream(p) as f:
                return f.read().decode("utf-8")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def read_json(path: str):
    text = read_text(path)
    return json.loads(text) if text else None


def write_text(path: str, text: str) -> None:
    """Write ``path`` whole or not at all (locally a temp file renamed over it; an object store
    writes an object whole); a failure is a ``StorageError`` naming ``path``, the file as it was."""
    tmp = None
    try:
        if is_remote(path):
            fs, p = _fs(path)
            with fs.open_output_stream(p) as f:
                f.write(text.encode())
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise StorageError(f"could not write {path} ({os_reason(e)})") from None


def remove_local(path: str) -> None:
    """Take back a local file this run wrote (an object store keeps its objects)."""
    if not is_remote(path):
        os.unlink(path)


@contextmanager
def writes(fix: str):
    """A failed write (a ``StorageError`` from ``write_text``, or an ``OSError`` from copying an
    export) becomes one ``StorageError`` line: the path, the cause and ``fix``."""
    try:
        yield
    except StorageError as e:
        raise StorageError(f"{e}; {fix}") from None
    except shutil.Error as e:  # copytree: a list of (source, destination, why)
        listed = e.args and isinstance(e.args[0], list) and e.args[0]
        _, where, why = listed[0] if listed else (None, "under --storage-path", str(e))
        raise StorageError(f"could not write {where} ({why}); {fix}") from None
    except OSError as e:
        raise StorageError(f"could not write {e.filename or 'under --storage-path'} ({os_reason(e)}); {fix}") from None
