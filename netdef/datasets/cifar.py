"""The CIFAR-10 and CIFAR-100 batches, binary or Python-pickled, as distributed by their authors.

Every image is 3 x 32 x 32 bytes: the red plane, then green, then blue (row-major).
Caffe's ``convert_cifar_data`` stores them in that order (RGB, not BGR) and so does
netdef. Layouts recognised in a folder (or in the folder the archive unpacks to):

- CIFAR-10 binary (``cifar-10-batches-bin``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
  and ``test_batch.bin``, records of 1 label byte + 3072 pixel bytes;
- CIFAR-10 Python (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``, pickled dicts with ``data`` (N x 3072) and ``labels``;
- CIFAR-100 binary (``cifar-100-binary``): ``train.bin`` and ``test.bin``, records of a
  coarse and a fine label byte + 3072 pixel bytes;
- CIFAR-100 Python (``cifar-100-python``): ``train`` and ``test`` with ``data``,
  ``fine_labels`` and ``coarse_labels``.

Pickles are read with an unpickler that only builds NumPy arrays and plain
containers, so a stray pickle cannot run code.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
from dataclasses import dataclass

import numpy

from ..errors import DatasetError

IMAGE_BYTES = 3 * 32 * 32
#: Caffe's converter numbers training records batch * 10000 + row, as the batches hold 10000 each
BATCH_STRIDE = 10000
SUBFOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-100-binary", "cifar-100-python")


@dataclass
class CifarBatch:
    """One batch file: N x 3 x 32 x 32 uint8 images, N labels, and the record numbers Caffe gives them."""

    path: str
    images: numpy.ndarray
    labels: numpy.ndarray
    first_key: int


@dataclass
class CifarLayout:
    """What a folder holds: ``name`` (cifar10 or cifar100), ``kind`` (binary or python) and the files per split."""

    name: str
    kind: str
    folder: str
    splits: dict[str, list[str]]


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _numbered(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: int(re.search(r"(\d+)(?:\.bin)?$", p).group(1)))


def find_layout(folder: str) -> CifarLayout:
    """Recognise the CIFAR files in ``folder`` (or in one of the archive's folder names inside it)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"CIFAR folder not found: {folder}")
    for sub in SUBFOLDERS:
        if os.path.isdir(os.path.join(folder, sub)):
            folder = os.path.join(folder, sub)
            break

    def there(name):
        return os.path.join(folder, name)

    train_bin = _numbered(glob.glob(there("data_batch_*.bin")))
    if train_bin or os.path.isfile(there("test_batch.bin")):
        test = [there("test_batch.bin")] if os.path.isfile(there("test_batch.bin")) else []
        return CifarLayout("cifar10", "binary", folder, {"train": train_bin, "test": test})
    train_py = _numbered([p for p in glob.glob(there("data_batch_*")) if re.search(r"_\d+$", p)])
    if train_py or os.path.isfile(there("test_batch")):
        test = [there("test_batch")] if os.path.isfile(there("test_batch")) else []
        return CifarLayout("cifar10", "python", folder, {"train": train_py, "test": test})
    if os.path.isfile(there("train.bin")) or os.path.isfile(there("test.bin")):
        splits = {s: [there(f"{s}.bin")] if os.path.isfile(there(f"{s}.bin")) else [] for s in ("train", "test")}
        return CifarLayout("cifar100", "binary", folder, splits)
    if os.path.isfile(there("train")) or os.path.isfile(there("test")):
        splits = {s: [there(s)] if os.path.isfile(there(s)) else [] for s in ("train", "test")}
        return CifarLayout("cifar100", "python", folder, splits)
    raise DatasetError(
        f"{folder} holds no CIFAR batches. Expected data_batch_N(.bin) and test_batch(.bin) (CIFAR-10) or "
        "train(.bin) and test(.bin) (CIFAR-100), binary or Python versions"
    )


def read_binary_batch(path: str, label_bytes: int, fine: bool = True) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Images and labels of a binary batch; ``label_bytes`` is 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)."""
    raw = numpy.fromfile(path, dtype=numpy.uint8)
    record = label_bytes + IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path}: a CIFAR binary batch is a whole number of {record}-byte records. Received: {raw.size} bytes"
        )
    rows = raw.reshape(-1, record)
    label_column = label_bytes - 1 if fine else 0
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_column].astype(numpy.int64)


def _field(d: dict, name: str):
    for key in (name, name.encode()):
        if key in d:
            return d[key]
    return None


def read_python_batch(path: str, fine: bool = True) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Images and labels of a pickled batch (``labels``, or ``fine_labels`` / ``coarse_labels`` for CIFAR-100)."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"{path} is not a CIFAR Python batch: {err}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path} is not a CIFAR Python batch (expected a dict). Received: {type(d).__name__}")
    data = _field(d, "data")
    labels = _field(d, "labels")
    if labels is None:
        labels = _field(d, "fine_labels" if fine else "coarse_labels")
    if data is None or labels is None:
        keys = ", ".join(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise DatasetError(f"{path} has no data and labels entries. Keys: {keys}")
    data = numpy.asarray(data, dtype=numpy.uint8)
    labels = numpy.asarray(labels, dtype=numpy.int64)
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(data) != len(labels):
        raise DatasetError(
            f"{path}: data must be N x {IMAGE_BYTES} with N labels. Received: {data.shape}, {len(labels)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_batches(layout: CifarLayout, split: str, fine: bool = True) -> list[CifarBatch]:
    """The batches of ``split`` (train or test) in order, with Caffe's record numbering."""
    out = []
    for index, path in enumerate(layout.splits[split]):
        if layout.kind == "binary":
            images, labels = read_binary_batch(path, 1 if layout.name == "cifar10" else 2, fine)
        else:
            images, labels = read_python_batch(path, fine)
        out.append(CifarBatch(path, images, labels, index * BATCH_STRIDE))
    return out


__all__ = ["CifarBatch", "CifarLayout", "find_layout", "read_batches", "read_binary_batch", "read_python_batch"]
