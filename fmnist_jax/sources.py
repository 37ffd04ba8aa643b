"""The raw Fashion-MNIST, as one path: `load_raw(source)` -> a folder (where other tools leave the
files, or downloaded) or TensorFlow Datasets -> the files read (IDX, gzipped or not, or Kaggle's
CSV) and checked against the official sha256 hashes or fingerprints.

What the path knows is in the tables at the top, not in branches: the official files, the folders
other tools use, what a file that is not what its name says turns out to be (_SIGNATURES), how to
unpack an archive. A failure is one DataError saying what was found where, and the fixes that can
work on this machine (`fix_hints`). Pure NumPy: data problems surface before any device work.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fmnist_jax.io import user_cache_dir, write_bytes

# ----------------------------------------------------------------------------- the tables

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: tuple[str, ...] = ("idx", "download", "tfds")
IMAGE_SIDE = 28
# Seconds a connection or a read may stall: a dead network fails in seconds, a slow one still works.
NETWORK_TIMEOUT_S = 15
# The IDX format (LeCun's MNIST page): big-endian uint32 magic number, count and dimensions, then
# one unsigned byte per label or pixel. kind -> (magic number, dimensions after the count).
_IDX = {"images": (2051, (IMAGE_SIDE, IMAGE_SIDE)), "labels": (2049, ())}


# sha256 of the official files' DECOMPRESSED bytes.
_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class IdxFile(NamedTuple):
    """One of the four official files: its standard name, "images" or "labels", how many."""

    name: str
    kind: str
    count: int

    @property
    def sha256(self) -> str:
        """Of the DECOMPRESSED bytes."""
        return _SHA256[self.name]


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile("train-images-idx3-ubyte", "images", 60_000),
    "train_labels": IdxFile("train-labels-idx1-ubyte", "labels", 60_000),
    "test_images": IdxFile("t10k-images-idx3-ubyte", "images", 10_000),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", "labels", 10_000),
}
# Kaggle's release: per split, a header line, then one `label,pixel1,...,pixel784` row per example.
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
CSV_HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, IMAGE_SIDE * IMAGE_SIDE + 1))
# TFDS and the CSV release hold the official examples in other orders, so the file hashes above
# cannot check them; these order-independent fingerprints (see check_examples), computed from the
# verified IDX files, check that they hold the same examples.
_FINGERPRINTS = {
    "train": "fb88a2f5c1b590c907f860b47803d006e4fa7b276cdb551799af9d443accdff7",
    "test": "0b381379398a0943a88bf3864ff3f5177903dcf178030b4b74c495294b38fa7c",
}
# Where tools leave the files inside the folder they were given, searched in this order: torchvision
# (root/FashionMNIST/raw), the zalando repository (data/fashion), Keras (datasets/fashion-mnist).
SUBFOLDERS = ("", "raw", "FashionMNIST/raw", "data/fashion", "fashion", "fashion-mnist")
# What a file that is not what its name says turns out to be: a pattern over its first 512 bytes
# -> the diagnosis, the first match wins. The formats people meet around datasets.
_SIGNATURES = (
    (rb"\A\Z", "the file is empty"),
    (rb"\A\x1f\x8b", "it is gzip-compressed"),
    (rb"\ABZh", "it is bzip2-compressed (decompress it: bunzip2)"),
    (rb"\A\xfd7zXZ\x00", "it is xz-compressed (decompress it: unxz)"),
    (rb"\APK\x03\x04", "it is a zip archive (unpack it: unzip)"),
    (rb"(?s)\A.{257}ustar", "it is a tar archive (unpack it: tar -xf)"),
    (rb"\Aversion https://git-lfs", "it is a Git LFS pointer (fetch the data: git lfs pull)"),
    (
        rb"\A/annex/objects/",
        "it is a git-annex pointer (fetch the data: datalad get / git annex get)",
    ),
    (rb"\A\0\0\x08\x03", "it is an IDX images file (are two files' names swapped?)"),  # 2051
    (rb"\A\0\0\x08\x01", "it is an IDX labels file (are two files' names swapped?)"),  # 2049
    (
        rb"(?i)<html|\A\s*<!doctype html",
        "it is an HTML page (an error or sign-in page saved in place of the file?)",
    ),
)
# Archives the files come in: name ending -> the command that unpacks one ({f}) into a folder ({d}).
_ARCHIVES = {
    ".zip": "unzip {f} -d {d}",
    ".tar": "tar -xf {f} -C {d}",
    ".tgz": "tar -xzf {f} -C {d}",
    ".tar.gz": "tar -xzf {f} -C {d}",
    ".7z": "7z x {f} -o{d}",
}
# What a TFDS preparation of fashion_mnist creates under its data folder before it is done.
_TFDS_SCRATCH = (
    "downloads",
    "downloads/*",
    "downloads/**/*.tmp.*",
    "fashion_mnist",
    "fashion_mnist/*",
)


class DataError(Exception):
    """Missing, malformed or unverified data; the message says what, where and how to fix."""


@dataclass(frozen=True)
class RawSplit:
    """One split of the full 10-class data: uint8 images [N, 28, 28], int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------- the path


def load_raw(source: str, data_dir, verify: bool) -> tuple[RawSplit, RawSplit, dict]:
    """(train, test, where) from `source` (SOURCES); `data_dir`: the folder to read ("idx"), to
    download into ("download"; default the user cache) or TFDS's data folder ("tfds"). `where`:
    "source" (`source`, or "csv" for Kaggle's files), "directory" (None for TFDS's default) and
    "file_order" (whether the examples are in the IDX files' order).

    Raises:
      DataError: the data is missing, damaged or not verified; the message says how to fix it.
    """
    if source == "tfds":
        train, test = load_tfds(data_dir, verify)
        directory = None if data_dir is None else str(data_dir)
        return train, test, {"source": source, "directory": directory, "file_order": False}
    folder_of = {"idx": find_data_dir, "download": download}
    if source not in folder_of:
        raise DataError(f"Unknown data source {source!r}; valid sources: {', '.join(SOURCES)}.")
    directory = folder_of[source](data_dir)
    files = _data_files(directory)  # complete: found so, or downloaded
    if csv := "train" in files:  # Kaggle's CSV: the official examples in another order
        train, test = (_read_csv(files[split], split, verify) for split in ("train", "test"))
    else:  # the checks by sha256 are of the IDX files: the examples in their order
        arrays = {
            key: read_idx(files[key], spec.kind, spec.count, spec.sha256 if verify else None)
            for key, spec in FILES.items()
        }
        train, test = (
            RawSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in ("train", "test")
        )
    where = {"source": "csv" if csv else source, "directory": str(directory)}
    return train, test, {**where, "file_order": not csv}


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files, or else Kaggle's two CSV files.

    An explicit `data_dir` (else a set $FMNIST_DATA_DIR) is the only place looked at, so a wrong
    setting is an error instead of silently reading other data; otherwise the Debian path, then
    the user cache. In each, the SUBFOLDERS other tools leave the files in are searched too.

    Raises:
      DataError: no complete set: the message says what each place holds instead, and the fixes.
    """
    env = os.environ.get("FMNIST_DATA_DIR")
    if data_dir is not None:
        places = {"data_dir argument / --data-dir": Path(data_dir)}
    elif env:
        places = {"$FMNIST_DATA_DIR": Path(env)}
    else:
        places = {
            "Debian package dataset-fashion-mnist": DEBIAN_DIR,
            "user cache": user_cache_dir(),
        }
    report = []
    for label, directory in places.items():
        directory = expanded(directory)
        for sub in SUBFOLDERS:
            if (directory / sub).is_dir() and _data_files(directory / sub):
                return directory / sub
        report.append(f"  - {directory} ({label}): {_what_is_there(directory)}")
    raise DataError(
        f"Fashion-MNIST data not found. Looked for the four IDX files "
        f"({', '.join(f.name for f in FILES.values())}; gzipped or not) or Kaggle's "
        f"{' and '.join(CSV_FILES.values())}, in each folder below and its subfolders "
        f"{', '.join(SUBFOLDERS[1:])}:\n"
        + "\n".join(report)
        + f"\n{fix_hints(elsewhere=data_dir is not None or bool(env))}"
    )


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
    spellings = (name, f"{name}.gz", dotted, f"{dotted}.gz")
    return next((directory / s for s in spellings if (directory / s).is_file()), None)


def _data_files(folder: Path) -> dict[str, Path] | None:
    """A complete set in `folder` itself: FILES' keys -> the four IDX files, else "train" and "test"
    -> Kaggle's CSV files; None if neither is complete."""
    idx = {key: existing_file(folder, spec.name) for key, spec in FILES.items()}
    if all(idx.values()):
        return idx
    csv = {split: folder / name for split, name in CSV_FILES.items()}
    return csv if all(path.is_file() for path in csv.values()) else None


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
    if data[:2] == b"\x1f\x8b":
        q = shlex.quote(str(path))
        raise DataError(
            f"{path} is gzip-compressed twice: decompressed once, it is still gzip data. "
            f"Fix: gzip -dc {q} > {q}.once && mv {q}.once {q}"
        )
    return data


def decompress(data: bytes, where, hint: str) -> bytes:
    """`data` gunzipped if it is gzip data, else as it is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: gzip data is truncated or corrupt ({e}).\n{hint}") from None


def read_idx(
    path: str | os.PathLike,
    expected_kind: str,
    expected_count: int | None = None,
    sha256: str | None = None,
) -> np.ndarray:
    """Read one IDX file (gz or raw): uint8 images [N, 28, 28] or int32 labels [N]; the structure
    checked first (it says more than a hash would), then the decompressed bytes' `sha256`, if given.

    Raises:
      DataError: unreadable, not such an IDX file (the message says what it looks like), or another
        file than `sha256` names.
    """
    path, kind, data = Path(path), expected_kind, read_bytes(Path(path))
    magic, dims = _IDX[kind]
    header = 4 * (2 + len(dims))
    fields = np.frombuffer(data[:header].ljust(header, b"\0"), ">u4").tolist()
    count, got_dims = fields[1], tuple(fields[2:])
    want = header + count * int(np.prod(dims, dtype=np.int64))
    problems = (  # (found, what is wrong), in the order they are checked
        (not data, "the file is empty"),
        (
            len(data) < header,
            f"only {len(data)} bytes, shorter than an IDX {kind} header ({header} bytes); "
            f"the file is truncated{_seems(data)}",
        ),
        (
            fields[0] != magic,
            f"magic number {fields[0]} is not {magic} (IDX unsigned-byte {kind}){_seems(data)}",
        ),
        (got_dims != dims, f"images are {'x'.join(map(str, got_dims))}, expected 28x28"),
        (
            expected_count not in (None, count),
            f"header says {count} {kind}, expected {expected_count}",
        ),
        (
            len(data) != want,
            f"{len(data)} bytes but its header ({count} {kind}) needs {want}; the file is "
            + ("truncated" if len(data) < want else "longer than its header says"),
        ),
    )
    if problem := next((text for found, text in problems if found), None):
        raise DataError(
            f"{path}: {problem}.\nThe file is damaged or not a Fashion-MNIST IDX file. "
            f"Fix: {_replace_hint(path)}."
        )
    if sha256 is not None and (got := hashlib.sha256(data).hexdigest()) != sha256:
        raise DataError(
            f"{path}: sha256 of the decompressed content is {got}, expected {sha256} (the "
            "official file's). It is well-formed IDX but not the official Fashion-MNIST file: it "
            "may be e.g. MNIST digits (same format and sizes) or corrupt.\nFix: "
            f"{_replace_hint(path)}; or, to use it anyway, pass verify=False "
            "(CLI: --allow-unverified-data)."
        )
    array = np.frombuffer(data, np.uint8, offset=header)
    return array.reshape(count, *dims) if dims else array.astype(np.int32)  # images: no copy


def _read_csv(path: Path, split: str, verify: bool) -> RawSplit:
    """One of Kaggle's CSV files (see CSV_FILES), checked for shape and range, and (`verify`) that
    it holds the official examples."""
    data = read_bytes(path)
    hint = f"The file is damaged or not Kaggle's {CSV_FILES[split]}. Fix: {_replace_hint(path)}."
    header, _, body = data.partition(b"\n")
    if header.strip().replace(b'"', b"") != CSV_HEADER.encode():
        raise DataError(
            f"{path}: the first line is not Kaggle's header "
            f"'label,pixel1,...,pixel784'{_seems(data)}.\n{hint}"
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
    raw = RawSplit(table[:, 1:].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, 0].astype(np.int32))
    if verify:
        check_examples(raw, split, str(path), _replace_hint(path))
    return raw


def check_examples(split: RawSplit, name: str, where: str, fix: str) -> None:
    """Raise unless `split` holds exactly the official examples of `name`, in any order: the
    sha256 of its examples' sorted sha256 hashes (of image bytes + label byte) is _FINGERPRINTS'."""
    digests = sorted(
        hashlib.sha256(image.tobytes() + bytes([label])).digest()
        for image, label in zip(split.images, split.labels.tolist(), strict=True)
    )
    if (got := hashlib.sha256(b"".join(digests)).hexdigest()) != _FINGERPRINTS[name]:
        raise DataError(
            f"{where} does not hold the official Fashion-MNIST {name} examples (order-independent "
            f"fingerprint {got}, expected {_FINGERPRINTS[name]}).\nFix: {fix}; or, to use it "
            "anyway, pass verify=False (CLI: --allow-unverified-data)."
        )


# ----------------------------------------------------------------------------- the network


def download(
    dest_dir: str | os.PathLike | None = None,
    *,
    base_url: str = OFFICIAL_BASE_URL,
    timeout: float = NETWORK_TIMEOUT_S,
) -> Path:
    """Fetch the four official .gz files into `dest_dir` (default user cache); return it.

    Every file is verified (sha256 of its decompressed bytes) before it is written, atomically;
    files already there and valid are kept. `timeout` (seconds) bounds each connect and read.

    Raises:
      DataError: the server cannot be reached or answers with an error, a file does not verify
        (nothing is written for it), or `dest_dir` is not writable.
    """
    dest = expanded(Path(dest_dir)) if dest_dir is not None else user_cache_dir()
    base = base_url if base_url.endswith("/") else base_url + "/"
    for spec in FILES.values():
        if _is_valid(existing_file(dest, spec.name), spec):
            continue  # kept: a completed download works offline
        url = f"{base}{spec.name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            offline = not isinstance(e, urllib.error.HTTPError)  # no server answered
            advice = "Check the network (or proxy settings) and retry" if offline else "Retry later"
            raise DataError(
                f"Download of {url} failed: {_why(e)}. Nothing was written.\n{advice}, or get the "
                f"files another way.\n{fix_hints('download', offline=offline)}"
            ) from None
        elsewhere = f"get the files another way.\n{fix_hints('download')}"
        data = decompress(
            payload, f"Downloaded {url}", f"Nothing was written. Fix: retry, or {elsewhere}"
        )
        if (got := hashlib.sha256(data).hexdigest()) != spec.sha256:
            raise DataError(
                f"Downloaded {url} is not the official {spec.name}{_seems(data)}: sha256 {got}, "
                f"expected {spec.sha256}. Nothing was written to {dest}.\nFix: retry later or from "
                f"another base_url, or {elsewhere}"
            )
        try:
            write_bytes(dest / f"{spec.name}.gz", payload)
        except OSError as e:
            raise DataError(
                f"Cannot write {dest / f'{spec.name}.gz'}: {e}. Fix: choose a writable --data-dir."
            ) from None
    return dest


def _is_valid(path: Path | None, spec: IdxFile) -> bool:
    try:
        return path is not None and hashlib.sha256(read_bytes(path)).hexdigest() == spec.sha256
    except DataError:
        return False


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return str(getattr(e, "reason", None) or e)


def _check_reachable(url: str, what: str, tried: str) -> None:
    """Fail at once when `url`'s server cannot be reached, instead of letting a downloader retry
    for minutes (TFDS tries every file 10 times). Any HTTP answer counts as reachable."""
    try:
        request = urllib.request.Request(url, method="HEAD")
        urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError, ValueError) as e:  # no HTTP answer at all
        raise DataError(
            f"{what} {url} cannot be reached: {_why(e)}.\n{fix_hints(tried, offline=True)}"
        ) from None


def load_tfds(data_dir, verify: bool) -> tuple[RawSplit, RawSplit]:
    """(train, test) of the full data from TensorFlow Datasets (`data_dir`: its data folder, None
    for its default), examples in TFDS's order; prepared from the official files if need be. A
    preparation that fails leaves nothing behind.

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
            images = np.concatenate([c[0] for c in chunks]).astype(np.uint8)
            labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
            splits.append(RawSplit(images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels))
        return splits

    root, before = None, set()
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
        made = _tfds_scratch(root) - before if root else set()
        for path in sorted(made, key=lambda p: len(p.parts)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise DataError(
            f"tensorflow_datasets could not load fashion_mnist ({where}): "
            f"{type(e).__name__}: {e}\n{fix_hints('tfds')}"
        ) from None
    again = "let TFDS prepare it again (delete its fashion_mnist folder)"
    for name, split in zip(("train", "test"), splits, strict=True) if verify else ():
        check_examples(split, name, f"tensorflow_datasets fashion_mnist[{name}] ({where})", again)
    return splits[0], splits[1]


def _tfds_scratch(root: Path) -> set[Path]:
    """What exists now of what a TFDS preparation creates under `root` (_TFDS_SCRATCH)."""
    if not root.exists():
        return set()
    return {root} | {path for pattern in _TFDS_SCRATCH for path in root.glob(pattern)}


# ----------------------------------------------------------------------------- what went wrong


def _seems(data: bytes) -> str:
    """': what `data` (a file's first bytes or more) appears to be', in words; '' if not known."""
    head = data[:512]
    what = next((text for pattern, text in _SIGNATURES if re.search(pattern, head)), "")
    if not what and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        first = head.decode("ascii").splitlines()[0]
        what = f"it is text{' (CSV?)' if ',' in first else ''}, starting {first[:40]!r}"
    return f": {what}" if what else ""


def _what_is_there(folder: Path) -> str:
    """What a place without a complete set holds instead, with the fix when it is recognisable."""
    if folder.is_file():
        try:
            with open(folder, "rb") as f:
                head = f.read(512)
        except OSError:
            head = b"?"
        return (
            f"a file, not a folder{_seems(head)}; pass the folder that holds the data files, "
            f"e.g. --data-dir {shlex.quote(str(folder.parent))}"
        )
    if not folder.is_dir():
        return "folder does not exist"
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        return f"cannot be listed ({e.strerror or e})"

    def missing(sub: Path) -> list[str]:
        return [spec.name for spec in FILES.values() if existing_file(sub, spec.name) is None]

    best = min(
        (folder / s for s in SUBFOLDERS if (folder / s).is_dir()), key=lambda f: len(missing(f))
    )
    where = f" in {best.relative_to(folder)}/" if best != folder else ""
    parts = [f"missing{where} {', '.join(missing(best))} (.gz or not)"]
    if csv := [name for name in CSV_FILES.values() if (folder / name).is_file()]:
        parts.append(f"has {csv[0]} but not {(set(CSV_FILES.values()) - set(csv)).pop()}")
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    parts.append(f"holds {', '.join(names[:8]) + more if names else 'nothing'}")
    links = {*entries, *best.iterdir()}
    if broken := sorted(p for p in links if p.is_symlink() and not p.exists()):  # to nothing
        link = broken[0]
        parts.append(
            f"{link.relative_to(folder)} is a broken symbolic link (to {os.readlink(link)})"
            + (f", and {len(broken) - 1} more" if len(broken) > 1 else "")
        )
        if any("annex/objects/" in os.readlink(p) for p in broken):
            q = shlex.quote(str(folder))
            parts.append(
                "the links point into a git-annex store whose content is not here: fetch it "
                f"with `datalad get {q}` or `git -C {q} annex get .`"
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


def fix_hints(tried: str = "idx", *, offline: bool = False, elsewhere: bool = False) -> str:
    """The ways to get the data that can work here: not the source that just failed (`tried`),
    nothing that needs the unreachable server when `offline`, no install of what is installed.
    `elsewhere`: an explicit folder was searched, so the default places may still hold the data."""
    debian = _data_files(DEBIAN_DIR) is not None
    tfds = tried != "tfds" and importlib.util.find_spec("tensorflow_datasets") is not None
    apt = not debian and shutil.which("apt-get") is not None  # install what is not installed
    pip = tried != "tfds" and not tfds and not offline
    fixes = {  # fix -> whether it applies here
        f"read the installed Debian package's files in {DEBIAN_DIR}: --source idx (the default) "
        "without --data-dir or $FMNIST_DATA_DIR": debian and (tried != "idx" or elsewhere),
        "Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist": apt,
        "point at a folder holding the four IDX files (.gz or not) or Kaggle's "
        f"{' and '.join(CSV_FILES.values())}: --data-dir DIR, or set FMNIST_DATA_DIR=DIR": True,
        f"download the official files ({OFFICIAL_BASE_URL}) into {user_cache_dir()}: "
        "--source download": tried != "download" and not offline,
        "read a TensorFlow Datasets folder that holds fashion_mnist: --source tfds "
        "[--data-dir TFDS_DIR]": tfds,
        "use TensorFlow Datasets: pip install 'fmnist-jax[tfds]', then --source tfds": pip,
    }
    return "How to fix (any one of):\n" + "\n".join(f"  - {f}" for f, ok in fixes.items() if ok)


def _replace_hint(path: Path) -> str:
    """How to replace a damaged or wrong file, by where it is."""
    if DEBIAN_DIR in path.parents:
        return "sudo apt-get install --reinstall dataset-fashion-mnist"
    return (
        "replace it with a good copy, or delete it and use --source download (the official "
        "files, checked by sha256)"
    )
