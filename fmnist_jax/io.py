"""Files and the terminal: atomic writes (a crash never leaves a truncated file under a final
name), the user cache folder, and output streams that print whatever their encoding lacks and
outlive a reader that stops reading."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import distributed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    On any exception the temporary file is removed and `path` is left untouched. A process
    killed outright (SIGKILL, power loss) leaves at most a `.<name>.<random>.tmp` file beside
    it, never a truncated file under the final name; `results.clean_stale_temporaries` removes
    those when the folder is next used.

    With several processes (`fmnist_jax.distributed`) only process 0 writes; the others get a
    scratch path whose content is discarded, and every process waits before and after the write
    (so no process reads results while they are being written, and all read the same).
    """
    path = Path(path)
    distributed.barrier(f"write {path}")
    if not distributed.is_writer():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        distributed.barrier(f"written {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename made durable (not every OS opens a folder)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    distributed.barrier(f"written {path}")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 (a path undecodable in the locale, held as
    surrogates, is written back as its original bytes)."""
    write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        # JSON has no NaN/inf; keep the information as a string.
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` to `path` atomically as indented JSON (NaN/inf as strings, arrays as lists)."""
    write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at `path`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object at `path` (what every results file holds).

    Raises:
      OSError: the file cannot be read.
      ValueError: it is not JSON, or not an object (e.g. a list or a number).
    """
    document = read_json(path)
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds a JSON {type(document).__name__}, not an object")
    return document


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` to `path` atomically in NumPy's .npy format."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))


def user_cache_dir() -> Path:
    """This project's cache: $XDG_CACHE_HOME/fmnist_jax, else ~/.cache/fmnist_jax, else (no home
    folder known: HOME unset for a user without a passwd entry, as in some containers)
    fmnist_jax-<uid> in the temporary folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base) / "fmnist_jax"
    try:
        return Path.home() / ".cache" / "fmnist_jax"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / f"fmnist_jax-{os.getuid()}"


# How the non-ASCII characters this project prints read in ASCII; others become \x.. escapes.
_ASCII_SPELLING = {
    "±": "+/-",
    "·": "-",
    "–": "-",
    "−": "-",
    "×": "x",
    "→": "->",
    "…": "...",
    "°": " deg",
    "√": "sqrt",
    "σ": "sigma",
    "Δ": "delta",
    "⚠": "(!)",
}


class _Tolerant:
    """A text stream that never stops the program: characters its encoding lacks are written as
    `_ASCII_SPELLING` says (others escaped, `\\xfc`) when `ascii`, and once its reader has gone
    (a closed pipe: `| head -1`) the rest goes to os.devnull. Everything else is the stream's."""

    def __init__(self, stream, ascii: bool):
        if ascii:
            stream.reconfigure(errors="backslashreplace")
        self.stream, self.table = stream, _ASCII_TABLE if ascii else None

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text.translate(self.table) if self.table else text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        """Python's recipe (docs of `signal`, "Note on SIGPIPE"): point the file descriptor at
        os.devnull, where what is still buffered and all later output go."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)
        with contextlib.suppress(OSError):
            self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


_ASCII_TABLE = str.maketrans(_ASCII_SPELLING)


def tolerant_output() -> None:
    """For an entry point: make stdout and stderr print characters their encoding cannot hold
    (PYTHONIOENCODING=ascii, a C locale) in ASCII ('±' as '+/-', others escaped) instead of
    raising UnicodeEncodeError, and outlive a reader that stops reading (`| head -1`): output
    then goes nowhere and the program runs on (a sweep trains and writes all its results)
    instead of dying with BrokenPipeError. Files are not affected: they are always UTF-8."""

    def tolerant(stream):
        if isinstance(stream, _Tolerant) or not hasattr(stream, "reconfigure"):
            return stream  # done already, or not a text file (None without a terminal)
        try:
            "".join(_ASCII_SPELLING).encode(stream.encoding)
            return _Tolerant(stream, ascii=False)
        except (UnicodeEncodeError, LookupError):
            return _Tolerant(stream, ascii=True)

    sys.stdout, sys.stderr = tolerant(sys.stdout), tolerant(sys.stderr)
