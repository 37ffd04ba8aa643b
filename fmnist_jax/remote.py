"""The data sources that need the network (DESIGN.md §1): the official files, downloaded and
verified, and TensorFlow Datasets (the optional `tfds` extra). Both fail within seconds when the
server cannot be reached, and leave nothing behind.

Pure NumPy: nothing here imports JAX.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from fmnist_jax.io import user_cache_dir, write_bytes
from fmnist_jax.sources import (
    FILES,
    IMAGE_SIDE,
    NETWORK_TIMEOUT_S,
    OFFICIAL_BASE_URL,
    DataError,
    IdxFile,
    RawSplit,
    check_examples,
    decompress,
    existing_file,
    expanded,
    fix_hints,
    read_bytes,
    seems,
)

# ----------------------------------------------------------------------------- the network


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return str(getattr(e, "reason", None) or e)


def _check_reachable(url: str, what: str, tried: str) -> None:
    """Fail at once when `url`'s server cannot be reached, instead of letting a downloader retry
    for minutes (TFDS tries every file 10 times). Any HTTP answer counts as reachable."""
    try:
        urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=NETWORK_TIMEOUT_S
        ).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        if not isinstance(e, urllib.error.HTTPError):  # no HTTP answer at all
            raise DataError(
                f"{what} {url} cannot be reached: {_why(e)}.\n{fix_hints(tried, offline=True)}"
            ) from None


def _is_valid(path: Path | None, spec: IdxFile) -> bool:
    if path is None:
        return False
    try:
        data = read_bytes(path)
    except DataError:
        return False
    return len(data) == spec.size and hashlib.sha256(data).hexdigest() == spec.sha256


def download(
    dest_dir: str | os.PathLike | None = None,
    *,
    base_url: str = OFFICIAL_BASE_URL,
    timeout: float = NETWORK_TIMEOUT_S,
) -> Path:
    """Fetch the four official .gz files into `dest_dir` (default user cache); return it.

    Every file is verified (size and sha256 of its decompressed bytes) before it is
    written, atomically; files already there and valid are kept. `timeout` (seconds) bounds
    each connection attempt and each read.

    Raises:
      DataError: the server cannot be reached or answers with an error, a file does not verify
        (nothing is written for it), or `dest_dir` is not writable.
    """
    dest = expanded(Path(dest_dir)) if dest_dir is not None else user_cache_dir()
    base = base_url if base_url.endswith("/") else base_url + "/"
    for spec in FILES.values():
        if _is_valid(existing_file(dest, spec.name), spec):
            continue
        url = f"{base}{spec.name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            offline = not isinstance(e, urllib.error.HTTPError)  # no server answered
            raise DataError(
                f"Download of {url} failed: {_why(e)}. Nothing was written.\n"
                + (
                    "Check the network (or proxy settings) and retry, or get the files another way.\n"
                    if offline
                    else "Retry later, or get the files another way.\n"
                )
                + fix_hints("download", offline=offline)
            ) from None
        data = decompress(
            payload,
            f"Downloaded {url}",
            "Nothing was written. Fix: retry, "
            f"or get the files another way.\n{fix_hints('download')}",
        )
        got = hashlib.sha256(data).hexdigest()
        if len(data) != spec.size or got != spec.sha256:
            raise DataError(
                f"Downloaded {url} is not the official {spec.name}{seems(data)}: {len(data)} bytes, "
                f"sha256 {got}; expected {spec.size} bytes, sha256 {spec.sha256}. "
                f"Nothing was written to {dest}.\nFix: retry later or from another "
                f"base_url, or get the files another way.\n{fix_hints('download')}"
            )
        try:
            write_bytes(dest / f"{spec.name}.gz", payload)
        except OSError as e:
            raise DataError(
                f"Cannot write {dest / (spec.name + '.gz')}: {e}. "
                "Fix: choose a writable --data-dir."
            ) from None
    return dest


# ----------------------------------------------------------------------------- TFDS


def _tfds_scratch(root: Path) -> set[Path]:
    """What a TFDS preparation of fashion_mnist creates under its data folder before it is done."""
    made = {
        root,
        root / "downloads",
        root / "downloads" / "extracted",
        root / "downloads" / "fashion_mnist",
        root / "fashion_mnist",
    }
    return (
        {p for p in made if p.exists()}
        | set(root.glob("downloads/**/*.tmp.*"))
        | set(root.glob("fashion_mnist/incomplete.*"))
    )


def load_tfds(data_dir, verify: bool) -> tuple[RawSplit, RawSplit]:
    """(train, test) of the full data from TensorFlow Datasets (`data_dir`: its data folder, None
    for its default), examples in TFDS's order; prepared from the official files if need be.

    Raises:
      DataError: tensorflow_datasets is not installed, the server cannot be reached, TFDS fails,
        or (`verify`) the examples are not the official ones.
    """
    try:
        import tensorflow_datasets as tfds  # heavy (TensorFlow): only when asked for
    except ImportError as e:
        raise DataError(
            f"--source tfds needs tensorflow_datasets, which is not importable ({e}).\n"
            f"Fix: pip install 'fmnist-jax[tfds]'; or get the data another way.\n"
            f"{fix_hints('tfds')}"
        ) from None
    where = f"data_dir={data_dir or 'TFDS default'}"
    kwargs = {} if data_dir is None else {"data_dir": str(data_dir)}

    def read(download: bool) -> list[RawSplit]:
        splits = []
        for name in ("train", "test"):
            # Chunked batches, not batch_size=-1: with metadata-less datasets (e.g. under
            # tfds.testing.mock_data) TFDS turns -1 into padded_batch(sys.maxsize), which
            # aborts TensorFlow >= 2.21.
            ds = tfds.load(
                "fashion_mnist", split=name, as_supervised=True, download=download, **kwargs
            )
            chunks = list(tfds.as_numpy(ds.batch(10_000)))
            images = np.concatenate([c[0] for c in chunks])
            labels = np.concatenate([c[1] for c in chunks])
            splits.append(
                RawSplit(
                    np.asarray(images, np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
                    np.asarray(labels).astype(np.int32),
                )
            )
        return splits

    absl = logging.getLogger("absl")  # TFDS warns of every folder not prepared, every retry
    level, root, before = absl.level, None, set()
    absl.setLevel(logging.ERROR)
    try:
        try:
            splits = read(download=False)  # a prepared dataset needs no network
        except Exception:  # noqa: BLE001 - not prepared (or damaged): TFDS downloads the
            # official files, retrying each for minutes when the server is unreachable
            root = Path(tfds.builder("fashion_mnist", **kwargs).data_dir_root)
            _check_reachable(
                f"{OFFICIAL_BASE_URL}{FILES['test_labels'].name}.gz",
                f"TFDS has no prepared fashion_mnist in {root}; to prepare it, TFDS "
                "needs the official files, but",
                "tfds",
            )
            before = _tfds_scratch(root)
            splits = read(download=True)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types (download, missing data, ...)
        for path in sorted(
            _tfds_scratch(root) - before if root else (), key=lambda p: len(p.parts)
        ):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise DataError(
            f"tensorflow_datasets could not load fashion_mnist ({where}): "
            f"{type(e).__name__}: {e}\n{fix_hints('tfds')}"
        ) from None
    finally:
        absl.setLevel(level)
    if verify:
        for name, split in zip(("train", "test"), splits):
            check_examples(
                split,
                name,
                f"tensorflow_datasets fashion_mnist[{name}] ({where})",
                "let TFDS prepare it again (delete its fashion_mnist folder)",
            )
    return splits[0], splits[1]
