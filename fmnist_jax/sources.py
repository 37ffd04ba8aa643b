"""The raw Fashion-MNIST files (DESIGN.md §1): finding them, reading and checking them,
downloading them, or reading them through TensorFlow Datasets.

Pure NumPy: nothing here imports JAX, so data problems surface before any device work.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fmnist_jax.io import write_bytes

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: tuple[str, ...] = ("idx", "download", "tfds")
IMAGE_SIDE = 28
_MAGIC = {"images": 2051, "labels": 2049}
_HEADER = {"images": 16, "labels": 8}


class IdxFile(NamedTuple):
    """One of the four standard files; size and sha256 are of the DECOMPRESSED bytes."""

    name: str
    kind: str
    count: int
    size: int
    sha256: str


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", "images", 60_000, 47_040_016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", "labels", 60_000, 60_008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", "images", 10_000, 7_840_016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", "labels", 10_000, 10_008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

# TFDS re-orders examples when it prepares a dataset, so the file hashes above cannot
# apply; these order-independent fingerprints (see _fingerprint) were computed from the
# verified IDX files and check that TFDS holds the same examples.
_TFDS_FINGERPRINTS = {
    "train": "fb88a2f5c1b590c907f860b47803d006e4fa7b276cdb551799af9d443accdff7",
    "test": "0b381379398a0943a88bf3864ff3f5177903dcf178030b4b74c495294b38fa7c",
}

FIX_HINTS = (
    "How to fix (any one of):\n"
    "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
    "  - point at a folder holding the four files (.gz or not): "
    "--data-dir DIR, or set FMNIST_DATA_DIR=DIR\n"
    f"  - download the official files ({OFFICIAL_BASE_URL}) into the user cache: "
    "--source download\n"
    "  - use TensorFlow Datasets: pip install 'fmnist-jax[tfds]', then --source tfds"
)
_DAMAGED_HINT = (
    "The file is damaged or not a Fashion-MNIST IDX file. Fix: restore it "
    "(sudo apt-get install --reinstall dataset-fashion-mnist), or delete it and "
    "fetch fresh copies with --source download."
)


class DataError(Exception):
    """Missing, malformed or unverified data; the message says what, where and how to fix."""


@dataclass(frozen=True)
class RawSplit:
    """One split of the full 10-class data: uint8 images [N, 28, 28], int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------- finding


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/fmnist_jax, else ~/.cache/fmnist_jax."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fmnist_jax"


def _existing_file(directory: Path, name: str) -> Path | None:
    # Uncompressed first: it reads faster and someone chose to decompress it.
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    return [f.name for f in FILES.values() if _existing_file(directory, f.name) is None]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files.

    An explicit `data_dir` (else a set $FMNIST_DATA_DIR) is the only place looked at,
    so a wrong setting is an error instead of silently reading other data; otherwise
    the Debian path, then the user cache.
    """
    env = os.environ.get("FMNIST_DATA_DIR")
    if data_dir is not None:
        places = [("data_dir argument / --data-dir", Path(data_dir))]
    elif env:
        places = [("$FMNIST_DATA_DIR", Path(env))]
    else:
        places = [("Debian package dataset-fashion-mnist", DEBIAN_DIR),
                  ("user cache", user_cache_dir())]
    report = []
    for label, directory in places:
        directory = directory.expanduser()
        if not directory.is_dir():
            report.append(f"  - {directory} ({label}): folder does not exist")
            continue
        missing = _missing_files(directory)
        if not missing:
            return directory
        report.append(f"  - {directory} ({label}): missing {', '.join(missing)} (.gz or not)")
    wanted = ", ".join(f.name for f in FILES.values())
    raise DataError(
        "Fashion-MNIST data not found. Looked for the four files "
        f"({wanted}; each may be gzipped) in:\n" + "\n".join(report) + "\n" + FIX_HINTS)


# ----------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    """The file's decompressed bytes (gzip detected by content, not by name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.\n{FIX_HINTS}") from None
    return _decompress(data, path, _DAMAGED_HINT)


def _decompress(data: bytes, where, hint: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: gzip data is truncated or corrupt ({e}).\n{hint}") from None


def _parse_idx(data: bytes, path: Path, kind: str, expected_count: int | None) -> np.ndarray:
    if kind not in _MAGIC:
        raise ValueError(f"expected_kind must be 'images' or 'labels', not {kind!r}")
    header = _HEADER[kind]
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, shorter than an IDX {kind} "
                        f"header ({header} bytes); the file is truncated.\n{_DAMAGED_HINT}")
    fields = np.frombuffer(data, ">u4", count=header // 4).tolist()
    if fields[0] != _MAGIC[kind]:
        raise DataError(f"{path}: magic number {fields[0]} is not {_MAGIC[kind]} "
                        f"(IDX unsigned-byte {kind}).\n{_DAMAGED_HINT}")
    count, dims = fields[1], tuple(fields[2:])
    if kind == "images" and dims != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: images are {dims[0]}x{dims[1]}, expected "
                        f"{IMAGE_SIDE}x{IMAGE_SIDE}.\n{_DAMAGED_HINT}")
    if expected_count is not None and count != expected_count:
        raise DataError(f"{path}: header says {count} {kind}, expected {expected_count}."
                        f"\n{_DAMAGED_HINT}")
    want = header + count * int(np.prod(dims, dtype=np.int64))
    if len(data) != want:
        problem = "truncated" if len(data) < want else "longer than its header says"
        raise DataError(f"{path}: {len(data)} bytes but its header ({count} {kind}) "
                        f"needs {want}; the file is {problem}.\n{_DAMAGED_HINT}")
    array = np.frombuffer(data, np.uint8, offset=header)
    if kind == "labels":
        return array.astype(np.int32)
    return array.reshape(count, *dims)  # read-only view of `data`: no copy


def read_idx(path: str | os.PathLike, *, expected_kind: str,
             expected_count: int | None = None) -> np.ndarray:
    """Read one IDX file (gz or raw): uint8 images [N, 28, 28] or int32 labels [N]."""
    path = Path(path)
    return _parse_idx(_read_bytes(path), path, expected_kind, expected_count)


def _verify(data: bytes, spec: IdxFile, path: Path) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise DataError(
            f"{path}: sha256 of the decompressed content is {got}, expected {spec.sha256} "
            f"(official {spec.name}). It is well-formed IDX but not the official "
            "Fashion-MNIST file: it may be e.g. MNIST digits (same format and sizes) or "
            "corrupt.\nFix: replace it with the official file (sudo apt-get install "
            "--reinstall dataset-fashion-mnist, or --source download), or, to use it "
            "anyway, pass verify=False (CLI: --allow-unverified-data).")


def _load_dir(directory: Path, verify: bool) -> tuple[RawSplit, RawSplit]:
    arrays = {}
    for key, spec in FILES.items():
        path = _existing_file(directory, spec.name)
        if path is None:
            raise DataError(f"{directory / spec.name}(.gz) does not exist.\n{FIX_HINTS}")
        data = _read_bytes(path)
        # Parse first: a structural error says more than a hash mismatch would.
        arrays[key] = _parse_idx(data, path, spec.kind, spec.count)
        if verify:
            _verify(data, spec, path)
    return (RawSplit(arrays["train_images"], arrays["train_labels"]),
            RawSplit(arrays["test_images"], arrays["test_labels"]))


def _fingerprint(split: RawSplit) -> str:
    """Order-independent sha256 of a split's (image, label) examples."""
    digests = sorted(hashlib.sha256(image.tobytes() + bytes([label])).digest()
                     for image, label in zip(split.images, split.labels.tolist()))
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _load_tfds(data_dir, verify: bool) -> tuple[RawSplit, RawSplit]:
    try:
        import tensorflow_datasets as tfds  # heavy (TensorFlow): only when asked for
    except ImportError as e:
        raise DataError(
            f"--source tfds needs tensorflow_datasets, which is not importable ({e}).\n"
            "Fix: pip install 'fmnist-jax[tfds]', or use --source idx / download.") from None
    kwargs = {} if data_dir is None else {"data_dir": str(data_dir)}
    splits = []
    for name in ("train", "test"):
        try:
            # Chunked batches, not batch_size=-1: with metadata-less datasets (e.g. under
            # tfds.testing.mock_data) TFDS turns -1 into padded_batch(sys.maxsize), which
            # aborts TensorFlow >= 2.21.
            ds = tfds.load("fashion_mnist", split=name, as_supervised=True, **kwargs)
            chunks = list(tfds.as_numpy(ds.batch(10_000)))
            images = np.concatenate([c[0] for c in chunks])
            labels = np.concatenate([c[1] for c in chunks])
        except Exception as e:  # TFDS raises many types (download, missing data, ...)
            raise DataError(
                f"tensorflow_datasets could not load fashion_mnist[{name}] "
                f"(data_dir={data_dir or 'TFDS default'}): {type(e).__name__}: {e}\n"
                f"{FIX_HINTS}") from None
        split = RawSplit(np.asarray(images, np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
                         np.asarray(labels).astype(np.int32))
        if verify and (got := _fingerprint(split)) != _TFDS_FINGERPRINTS[name]:
            raise DataError(
                f"tensorflow_datasets fashion_mnist[{name}] (data_dir="
                f"{data_dir or 'TFDS default'}) does not hold the official examples "
                f"(fingerprint {got}, expected {_TFDS_FINGERPRINTS[name]}).\nFix: let "
                "TFDS re-prepare it, use --source idx/download, or pass verify=False "
                "(CLI: --allow-unverified-data).")
        splits.append(split)
    return splits[0], splits[1]


def load_fashion_mnist(source: str = "idx", data_dir: str | os.PathLike | None = None,
                       *, verify: bool = True) -> tuple[RawSplit, RawSplit]:
    """(train, test) of the full 10-class data from `source` (see SOURCES).

    For "download", `data_dir` is where files go (default: user cache); for "tfds" it
    is TFDS's data_dir. TFDS returns examples in its own order, not file order.
    """
    train, test, _ = load_raw(source, data_dir, verify)
    return train, test


def load_raw(source: str, data_dir, verify: bool) -> tuple[RawSplit, RawSplit, str | None]:
    """(train, test, the folder read or None) from `source`; see `load_fashion_mnist`.

    Raises:
      DataError: the data is missing, damaged or not verified; the message says how to fix it.
    """
    if source == "idx":
        directory = find_data_dir(data_dir)
    elif source == "download":
        directory = download(data_dir)
    elif source == "tfds":
        return *_load_tfds(data_dir, verify), None if data_dir is None else str(data_dir)
    else:
        raise DataError(
            f"Unknown data source {source!r}; valid sources: {', '.join(SOURCES)}.")
    return *_load_dir(directory, verify), str(directory)


# ----------------------------------------------------------------------------- download


def _is_valid(path: Path | None, spec: IdxFile) -> bool:
    if path is None:
        return False
    try:
        data = _read_bytes(path)
    except DataError:
        return False
    return len(data) == spec.size and hashlib.sha256(data).hexdigest() == spec.sha256


def download(dest_dir: str | os.PathLike | None = None, *,
             base_url: str = OFFICIAL_BASE_URL, timeout: float = 60) -> Path:
    """Fetch the four official .gz files into `dest_dir` (default user cache); return it.

    Every file is verified (size and sha256 of its decompressed bytes) before it is
    written, atomically; files already there and valid are kept.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else user_cache_dir()
    base = base_url if base_url.endswith("/") else base_url + "/"
    for spec in FILES.values():
        if _is_valid(_existing_file(dest, spec.name), spec):
            continue
        url = f"{base}{spec.name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = (f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError)
                   else getattr(e, "reason", None) or e)
            raise DataError(
                f"Download of {url} failed: {why}.\n"
                f"Check the network or base_url, or get the files another way.\n"
                f"{FIX_HINTS}") from None
        data = _decompress(payload, f"Downloaded {url}", "Nothing was written. Fix: retry, "
                           f"or get the files another way.\n{FIX_HINTS}")
        got = hashlib.sha256(data).hexdigest()
        if len(data) != spec.size or got != spec.sha256:
            raise DataError(
                f"Downloaded {url} is not the official {spec.name}: {len(data)} bytes, "
                f"sha256 {got}; expected {spec.size} bytes, sha256 {spec.sha256}. "
                f"Nothing was written to {dest}.\nFix: retry later or from another "
                f"base_url, or get the files another way.\n{FIX_HINTS}")
        try:
            write_bytes(dest / f"{spec.name}.gz", payload)
        except OSError as e:
            raise DataError(f"Cannot write {dest / (spec.name + '.gz')}: {e}. "
                            "Fix: choose a writable --data-dir.") from None
    return dest
