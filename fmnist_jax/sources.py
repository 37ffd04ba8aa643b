"""The raw Fashion-MNIST files on this machine (DESIGN.md §1): finding them in the layouts other
tools leave them, reading and checking them (IDX, gzipped or not, or Kaggle's CSV files). The
sources that need the network are in `fmnist_jax.remote`.

Pure NumPy: nothing here imports JAX, so data problems surface before any device work.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import shlex
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fmnist_jax.io import user_cache_dir

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: tuple[str, ...] = ("idx", "download", "tfds")
IMAGE_SIDE = 28
_MAGIC = {"images": 2051, "labels": 2049}
_HEADER = {"images": 16, "labels": 8}
_GZIP = b"\x1f\x8b"
# Seconds a connection or a read may stall: a dead network fails in seconds, a slow one still works.
NETWORK_TIMEOUT_S = 15


class IdxFile(NamedTuple):
    """One of the four standard files; size and sha256 are of the DECOMPRESSED bytes."""

    name: str
    kind: str
    count: int
    size: int
    sha256: str


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        "images",
        60_000,
        47_040_016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        "labels",
        60_000,
        60_008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        "images",
        10_000,
        7_840_016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        "labels",
        10_000,
        10_008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
# Kaggle's release: per split, a header line, then one `label,pixel1,...,pixel784` row per example.
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
CSV_HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, IMAGE_SIDE * IMAGE_SIDE + 1))
# Where tools leave the files inside the folder they were given, searched in this order:
# torchvision (FashionMNIST/raw), the zalando repository (data/fashion), Keras (fashion-mnist).
SUBFOLDERS = ("", "raw", "FashionMNIST/raw", "data/fashion", "fashion", "fashion-mnist")
_ARCHIVES = {
    ".zip": "unzip {f} -d {d}",
    ".tar": "tar -xf {f} -C {d}",
    ".tgz": "tar -xzf {f} -C {d}",
    ".tar.gz": "tar -xzf {f} -C {d}",
    ".7z": "7z x {f} -o{d}",
}

# TFDS and the CSV release hold the official examples in other orders, so the file hashes above
# cannot check them; these order-independent fingerprints (see _fingerprint), computed from the
# verified IDX files, check that they hold the same examples.
_FINGERPRINTS = {
    "train": "fb88a2f5c1b590c907f860b47803d006e4fa7b276cdb551799af9d443accdff7",
    "test": "0b381379398a0943a88bf3864ff3f5177903dcf178030b4b74c495294b38fa7c",
}


class DataError(Exception):
    """Missing, malformed or unverified data; the message says what, where and how to fix."""


@dataclass(frozen=True)
class RawSplit:
    """One split of the full 10-class data: uint8 images [N, 28, 28], int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray


def fix_hints(tried: str = "idx", *, offline: bool = False, elsewhere: bool = False) -> str:
    """The ways to get the data that can work here: not the source that just failed (`tried`),
    nothing that needs the unreachable server when `offline`, no install of what is installed.
    `elsewhere`: an explicit folder was searched, so the default places may still hold the data."""
    fixes = []
    if _data_files(DEBIAN_DIR):
        if tried != "idx" or elsewhere:
            fixes.append(
                f"read the installed Debian package's files in {DEBIAN_DIR}: --source idx "
                "(the default) without --data-dir or $FMNIST_DATA_DIR"
            )
    elif shutil.which("apt-get"):
        fixes.append("Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist")
    fixes.append(
        "point at a folder holding the four IDX files (.gz or not) or Kaggle's "
        f"{' and '.join(CSV_FILES.values())}: --data-dir DIR, or set FMNIST_DATA_DIR=DIR"
    )
    if tried != "download" and not offline:
        fixes.append(
            f"download the official files ({OFFICIAL_BASE_URL}) into {user_cache_dir()}: "
            "--source download"
        )
    if tried != "tfds":
        if importlib.util.find_spec("tensorflow_datasets") is not None:
            fixes.append(
                "read a TensorFlow Datasets folder that holds fashion_mnist: --source tfds "
                "[--data-dir TFDS_DIR]"
            )
        elif not offline:
            fixes.append(
                "use TensorFlow Datasets: pip install 'fmnist-jax[tfds]', then --source tfds"
            )
    return "How to fix (any one of):\n" + "\n".join(f"  - {fix}" for fix in fixes)


def _replace_hint(path: Path) -> str:
    """How to replace a damaged or wrong file, by where it is."""
    if DEBIAN_DIR in path.parents:
        return "sudo apt-get install --reinstall dataset-fashion-mnist"
    return (
        "replace it with a good copy, or delete it and use --source download (the official "
        "files, checked by sha256)"
    )


# ----------------------------------------------------------------------------- what a file is

_SIGNATURES = (
    (_GZIP, "gzip-compressed"),
    (b"BZh", "bzip2-compressed (decompress it: bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed (decompress it: unxz)"),
    (b"PK\x03\x04", "a zip archive (unpack it: unzip)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the data (fetch it: git lfs pull)"),
)


def looks_like(data: bytes) -> str:
    """What `data` (a file's first bytes or more) appears to be, in words; '' if nothing known."""
    if not data:
        return "the file is empty"
    for magic, what in _SIGNATURES:  # the formats people meet around datasets
        if data.startswith(magic):
            return f"it is {what}"
    if data[257:262] == b"ustar":
        return "it is a tar archive (unpack it: tar -xf)"
    kind = {number: kind for kind, number in _MAGIC.items()}.get(int.from_bytes(data[:4], "big"))
    if kind:
        return f"it is an IDX {kind} file (are two files' names swapped?)"
    head = data[:512]
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype html"):
        return "it is an HTML page (an error or sign-in page saved in place of the file?)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        first = head.decode("ascii").splitlines()[0] if head.strip() else ""
        return f"it is text{' (CSV?)' if ',' in first else ''}, starting {first[:40]!r}"
    return ""


def seems(data: bytes) -> str:
    what = looks_like(data)
    return f": {what}" if what else ""


# ----------------------------------------------------------------------------- finding


def expanded(path: Path) -> Path:
    """`path` with a leading ~ expanded (kept as it is when no home folder is known)."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def existing_file(directory: Path, name: str) -> Path | None:
    """`name` in `directory`: uncompressed first (it reads faster), then .gz; also spelt with a dot
    for the second dash, as some archive tools unpack it (train-images.idx3-ubyte)."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, f"{name}.gz", dotted, f"{dotted}.gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _data_files(folder: Path) -> dict[str, Path] | None:
    """A complete set in `folder` itself: FILES' keys -> the four IDX files, else "train" and "test"
    -> Kaggle's CSV files; None if neither is complete."""
    idx = {key: existing_file(folder, spec.name) for key, spec in FILES.items()}
    if all(idx.values()):
        return idx
    csv = {split: folder / name for split, name in CSV_FILES.items()}
    return csv if all(path.is_file() for path in csv.values()) else None


def _what_is_there(folder: Path) -> str:
    """What a place without a complete set holds instead, with the fix when it is recognisable."""
    if folder.is_file():
        try:
            with open(folder, "rb") as f:
                head = f.read(512)
        except OSError:
            head = b"?"
        return (
            f"a file, not a folder{seems(head)}; pass the folder that holds the data files, "
            f"e.g. --data-dir {shlex.quote(str(folder.parent))}"
        )
    if not folder.is_dir():
        return "folder does not exist"
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        return f"cannot be listed ({e.strerror or e})"
    subfolders = [folder / sub for sub in SUBFOLDERS if (folder / sub).is_dir()]
    best = max(
        subfolders, key=lambda f: sum(existing_file(f, s.name) is not None for s in FILES.values())
    )
    missing = [spec.name for spec in FILES.values() if existing_file(best, spec.name) is None]
    where = f" in {best.relative_to(folder)}/" if best != folder else ""
    parts = [f"missing{where} {', '.join(missing)} (.gz or not)"]
    csv = [name for name in CSV_FILES.values() if (folder / name).is_file()]
    if csv:
        parts.append(f"has {csv[0]} but not {(set(CSV_FILES.values()) - set(csv)).pop()}")
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    parts.append(
        "holds "
        + (
            ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            if names
            else "nothing"
        )
    )
    for path in entries:
        suffix = next((s for s in _ARCHIVES if path.name.lower().endswith(s)), None)
        if suffix and path.is_file():
            command = _ARCHIVES[suffix].format(f=shlex.quote(str(path)), d=shlex.quote(str(folder)))
            parts.append(f"{path.name} is an archive: unpack it first ({command})")
    if any(folder.glob("fashion_mnist/*/dataset_info.json")):
        parts.append(
            f"fashion_mnist/ is a TensorFlow Datasets folder: --source tfds --data-dir "
            f"{shlex.quote(str(folder))} reads it"
        )
    return "; ".join(parts)


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files, or else Kaggle's two CSV files.

    An explicit `data_dir` (else a set $FMNIST_DATA_DIR) is the only place looked at, so a wrong
    setting is an error instead of silently reading other data; otherwise the Debian path, then
    the user cache. In each, the subfolders other tools leave the files in are searched too
    (SUBFOLDERS: torchvision's FashionMNIST/raw, the zalando repository's data/fashion, ...).

    Raises:
      DataError: no complete set: the message says what each place holds instead, and the fixes.
    """
    env = os.environ.get("FMNIST_DATA_DIR")
    if data_dir is not None:
        places = [("data_dir argument / --data-dir", Path(data_dir))]
    elif env:
        places = [("$FMNIST_DATA_DIR", Path(env))]
    else:
        places = [
            ("Debian package dataset-fashion-mnist", DEBIAN_DIR),
            ("user cache", user_cache_dir()),
        ]
    report = []
    for label, directory in places:
        directory = expanded(directory)
        for sub in SUBFOLDERS:
            if (directory / sub).is_dir() and _data_files(directory / sub):
                return directory / sub
        report.append(f"  - {directory} ({label}): {_what_is_there(directory)}")
    wanted = ", ".join(f.name for f in FILES.values())
    raise DataError(
        f"Fashion-MNIST data not found. Looked for the four IDX files ({wanted}; gzipped or not) "
        f"or Kaggle's {' and '.join(CSV_FILES.values())}, in each folder below and its subfolders "
        f"{', '.join(SUBFOLDERS[1:])}:\n"
        + "\n".join(report)
        + "\n"
        + fix_hints(elsewhere=data_dir is not None or bool(env))
    )


# ----------------------------------------------------------------------------- reading


def read_bytes(path: Path) -> bytes:
    """The file's decompressed bytes (gzip detected by content, not by name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"Cannot read {path}: {e.strerror or e}. Fix: make it readable, or point "
            "--data-dir at a readable copy."
        ) from None
    data = decompress(data, path, f"Fix: {_replace_hint(path)}.")
    if data[:2] == _GZIP:
        q = shlex.quote(str(path))
        raise DataError(
            f"{path} is gzip-compressed twice: decompressed once, it is still gzip data. "
            f"Fix: gzip -dc {q} > {q}.once && mv {q}.once {q}"
        )
    return data


def decompress(data: bytes, where, hint: str) -> bytes:
    if data[:2] != _GZIP:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: gzip data is truncated or corrupt ({e}).\n{hint}") from None


def _parse_idx(data: bytes, path: Path, kind: str, expected_count: int | None) -> np.ndarray:
    if kind not in _MAGIC:
        raise ValueError(f"expected_kind must be 'images' or 'labels', not {kind!r}")
    hint = f"The file is damaged or not a Fashion-MNIST IDX file. Fix: {_replace_hint(path)}."
    header = _HEADER[kind]
    if len(data) < header:
        raise DataError(
            f"{path}: the file is empty.\n{hint}"
            if not data
            else f"{path}: only {len(data)} bytes, shorter than an IDX {kind} header "
            f"({header} bytes); the file is truncated{seems(data)}.\n{hint}"
        )
    fields = np.frombuffer(data, ">u4", count=header // 4).tolist()
    if fields[0] != _MAGIC[kind]:
        raise DataError(
            f"{path}: magic number {fields[0]} is not {_MAGIC[kind]} "
            f"(IDX unsigned-byte {kind}){seems(data)}.\n{hint}"
        )
    count, dims = fields[1], tuple(fields[2:])
    if kind == "images" and dims != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{path}: images are {dims[0]}x{dims[1]}, expected {IMAGE_SIDE}x{IMAGE_SIDE}.\n{hint}"
        )
    if expected_count is not None and count != expected_count:
        raise DataError(f"{path}: header says {count} {kind}, expected {expected_count}.\n{hint}")
    want = header + count * int(np.prod(dims, dtype=np.int64))
    if len(data) != want:
        problem = "truncated" if len(data) < want else "longer than its header says"
        raise DataError(
            f"{path}: {len(data)} bytes but its header ({count} {kind}) "
            f"needs {want}; the file is {problem}.\n{hint}"
        )
    array = np.frombuffer(data, np.uint8, offset=header)
    if kind == "labels":
        return array.astype(np.int32)
    return array.reshape(count, *dims)  # read-only view of `data`: no copy


def read_idx(
    path: str | os.PathLike, *, expected_kind: str, expected_count: int | None = None
) -> np.ndarray:
    """Read one IDX file (gz or raw): uint8 images [N, 28, 28] or int32 labels [N].

    Raises:
      DataError: unreadable, or not such an IDX file (the message says what it looks like).
    """
    path = Path(path)
    return _parse_idx(read_bytes(path), path, expected_kind, expected_count)


def _read_csv(path: Path, split: str) -> RawSplit:
    """One of Kaggle's CSV files (see CSV_FILES), checked for shape and range."""
    data = read_bytes(path)
    hint = f"The file is damaged or not Kaggle's {CSV_FILES[split]}. Fix: {_replace_hint(path)}."
    header, _, body = data.partition(b"\n")
    if header.strip().replace(b'"', b"") != CSV_HEADER.encode():
        raise DataError(
            f"{path}: the first line is not Kaggle's header "
            f"'label,pixel1,...,pixel784'{seems(data)}.\n{hint}"
        )
    try:
        table = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.uint8, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: not rows of 785 integers in 0..255 ({e}).\n{hint}") from None
    count = FILES[f"{split}_labels"].count
    if table.shape != (count, 1 + IMAGE_SIDE * IMAGE_SIDE) or table[:, 0].max(initial=0) > 9:
        raise DataError(
            f"{path}: {table.shape[0]} rows of {table.shape[1]} numbers, labels up to "
            f"{table[:, 0].max(initial=0)}; expected {count} rows of a label 0..9 and "
            f"784 pixels: the file is truncated or not Kaggle's.\n{hint}"
        )
    return RawSplit(table[:, 1:].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, 0].astype(np.int32))


def _verify(data: bytes, spec: IdxFile, path: Path) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise DataError(
            f"{path}: sha256 of the decompressed content is {got}, expected {spec.sha256} "
            f"(official {spec.name}). It is well-formed IDX but not the official "
            "Fashion-MNIST file: it may be e.g. MNIST digits (same format and sizes) or "
            f"corrupt.\nFix: {_replace_hint(path)}; or, to use it anyway, pass verify=False "
            "(CLI: --allow-unverified-data)."
        )


def _fingerprint(split: RawSplit) -> str:
    """Order-independent sha256 of a split's (image, label) examples."""
    digests = sorted(
        hashlib.sha256(image.tobytes() + bytes([label])).digest()
        for image, label in zip(split.images, split.labels.tolist())
    )
    return hashlib.sha256(b"".join(digests)).hexdigest()


def check_examples(split: RawSplit, name: str, where: str, fix: str) -> None:
    """Raise unless `split` holds exactly the official examples of `name`, in any order."""
    if (got := _fingerprint(split)) != _FINGERPRINTS[name]:
        raise DataError(
            f"{where} does not hold the official Fashion-MNIST {name} examples (order-independent "
            f"fingerprint {got}, expected {_FINGERPRINTS[name]}).\nFix: {fix}; or, to use it "
            "anyway, pass verify=False (CLI: --allow-unverified-data)."
        )


def load_dir(directory: Path, verify: bool) -> tuple[RawSplit, RawSplit, str]:
    """(train, test, format) from a folder with a complete set (see `_data_files`)."""
    files = _data_files(directory)
    if files is None:
        raise DataError(f"{directory}: {_what_is_there(directory)}.\n{fix_hints()}")
    if "train" in files:  # Kaggle's CSV: the official examples in another order
        splits = [_read_csv(files[name], name) for name in ("train", "test")]
        if verify:
            for name, split in zip(("train", "test"), splits):
                check_examples(split, name, str(files[name]), _replace_hint(files[name]))
        return splits[0], splits[1], "csv"
    arrays = {}
    for key, spec in FILES.items():
        data = read_bytes(files[key])
        # Parse first: a structural error says more than a hash mismatch would.
        arrays[key] = _parse_idx(data, files[key], spec.kind, spec.count)
        if verify:
            _verify(data, spec, files[key])
    return (
        RawSplit(arrays["train_images"], arrays["train_labels"]),
        RawSplit(arrays["test_images"], arrays["test_labels"]),
        "idx",
    )
