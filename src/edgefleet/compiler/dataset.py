"""Calibration and validation data: ``.npz``, ``.npy`` or a folder of images, checked against the model.

Every array holds N samples along its first axis; the remaining axes must match the model input's
shape without its batch axis: for the usual input batched on axis 0 that is the shape after the
first dimension; for an input batched on another axis (an RNN state ``[layers, batch, hidden]``
holds ``(N, layers, hidden)``) that axis is left out, and the compiler moves the samples to it when
it feeds the model; an input with no batch axis (a scalar, a per-call setting) holds one full value
per sample, ``(N, *shape)``, and a model with such an input is run one sample at a time. In an ``.npz``, arrays are keyed by input name (a
single-input model also accepts any one array) and optional labels are stored under ``labels``,
``label`` or ``y``. An ``.npy`` holds the one input of a single-input model. An image folder holds
images directly (no labels) or one sub-folder per class (labels are the sorted sub-folder indices);
images are resized to the input's height and width and scaled to [0, 1] for float inputs.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.tensors import DataType, TensorSpec

LABEL_KEYS = ("labels", "label", "y")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class Dataset:
    """N samples for each model input, plus optional integer class labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    #: input name -> the model input's batch axis (None: no batch axis); unlisted inputs: axis 0
    axes: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    @property
    def batched_on_first_axis(self) -> bool:
        """True when every input takes its samples on axis 0 (batches are plain slices and outputs
        come back with the samples on axis 0)."""
        return all(self.axes.get(name, 0) == 0 for name in self.inputs)

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.source, self.axes)

    def feeds(self, window: slice) -> dict[str, np.ndarray]:
        """The samples of ``window`` laid out as the model takes them (samples moved to each input's
        batch axis; an input without one gets the window's first sample's value)."""
        feeds: dict[str, np.ndarray] = {}
        for name, array in self.inputs.items():
            axis = self.axes.get(name, 0)
            if axis is None:
                feeds[name] = np.asarray(array[window.start])
            elif axis == 0:
                feeds[name] = array[window]
            else:
                feeds[name] = np.ascontiguousarray(np.moveaxis(array[window], 0, axis))
        return feeds

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """One sample as a batch of 1."""
        return self.feeds(slice(index, index + 1))

    def batch_size(self, specs: Sequence[TensorSpec], preferred: int) -> tuple[int, bool]:
        """(samples per run, whether the model fixes it) for a model with inputs ``specs``: a fixed
        batch dimension wins; a model with an input that has no batch axis, or batched on another
        axis than the first, runs one sample at a time; otherwise ``preferred``."""
        for spec in specs:
            axis = self.axes.get(spec.name, 0)
            if axis is not None and axis < len(spec.shape) and spec.shape[axis] > 0:
                return spec.shape[axis], True
        return (preferred if self.batched_on_first_axis else 1), False

    def batches(self, size: int, partial: bool) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """Consecutive batches of ``size`` samples with the slice each covers; a trailing shorter
        batch is included only when ``partial`` (models with a fixed batch dimension cannot take it)."""
        stop = self.size if partial else self.size - self.size % size
        for start in range(0, stop, size):
            window = slice(start, min(start + size, stop))
            yield window, self.feeds(window)


def load_dataset(
    path: Path, specs: Sequence[TensorSpec], what: str, axes: Mapping[str, int | None] | None = None
) -> Dataset:
    """Read ``path`` (``.npz``/``.npy``/image folder) as data for a model with inputs ``specs``
    batched on ``axes`` (input name -> batch axis or None; unlisted: axis 0).

    ``what`` ("calibration", "validation") prefixes error messages. INVALID_ARGUMENT on data whose
    shape or type does not fit the model, NOT_FOUND if ``path`` does not exist.
    """
    if not path.exists():
        raise NotFound(f"{what} data {path} does not exist")
    if path.is_dir():
        arrays, labels = _read_image_folder(path, specs, what)
    elif path.suffix == ".npz":
        arrays, labels = _read_npz(path, specs, what)
    elif path.suffix == ".npy":
        arrays, labels = _read_npy(path, specs, what)
    else:
        raise InvalidArgument(f"{what} data {path.name}: expected a .npz or .npy file or a folder of images")
    axes = dict(axes or {})
    inputs = {
        spec.name: _check_array(arrays[spec.name], spec, axes.get(spec.name, 0), path.name, what)
        for spec in specs
    }
    sizes = {name: a.shape[0] for name, a in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(f"{what} data {path.name}: inputs have different sample counts {sizes}")
    count = next(iter(sizes.values()), 0)
    if count == 0:
        raise InvalidArgument(f"{what} data {path.name} holds no samples")
    if labels is not None:
        labels = _check_labels(labels, count, path.name, what)
    return Dataset(inputs, labels, str(path), axes)


def synthetic_dataset(
    specs: Sequence[TensorSpec], count: int, seed: int = 0, axes: Mapping[str, int | None] | None = None
) -> Dataset:
    """Random inputs (standard normal floats, small non-negative integers), for output agreement only."""
    rng = np.random.default_rng(seed)
    axes = dict(axes or {})
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (count, *(d if d > 0 else 1 for d in _per_sample(spec.shape, axes.get(spec.name, 0))))
        if spec.dtype in (DataType.FLOAT16, DataType.FLOAT32, DataType.FLOAT64):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        else:
            inputs[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype.numpy)
    return Dataset(inputs, None, "random", axes)


def _per_sample(shape: Sequence[int], axis: int | None) -> tuple[int, ...]:
    """The shape of one sample of an input of ``shape`` batched on ``axis``."""
    if axis is None:
        return tuple(shape)
    return tuple(d for i, d in enumerate(shape) if i != axis) if shape else ()


def _read_npz(
    path: Path, specs: Sequence[TensorSpec], what: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidArgument(f"{what} data {path.name} is not a readable .npz file: {exc}") from exc
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InvalidArgument(
            f"{what} data {path.name}: no array for input(s) {', '.join(missing)} "
            f"(arrays found: {', '.join(sorted(arrays)) or 'none'}; labels go under {'/'.join(LABEL_KEYS)})"
        )
    return arrays, labels


def _read_npy(path: Path, specs: Sequence[TensorSpec], what: str) -> tuple[dict[str, np.ndarray], None]:
    if len(specs) != 1:
        raise InvalidArgument(
            f"{what} data {path.name}: a .npy file holds one array but the model has {len(specs)} inputs; "
            "use a .npz keyed by input name"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{what} data {path.name} is not a readable .npy file: {exc}") from exc
    return {specs[0].name: array}, None


def _read_image_folder(
    path: Path, specs: Sequence[TensorSpec], what: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        from PIL import Image
    except ImportError as exc:
        raise FailedPrecondition(
            f"reading the image folder {path} needs Pillow: pip install 'edgefleet[compiler]'"
        ) from exc
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise InvalidArgument(
            f"{what} data {path.name}: an image folder fits a model with one 4-D image input; "
            "use a .npz for other models"
        )
    spec = specs[0]
    nchw = spec.shape[1] in (1, 3)
    height, width, channels = (spec.shape[2], spec.shape[3], spec.shape[1]) if nchw else spec.shape[1:4]
    if height <= 0 or width <= 0 or channels not in (1, 3):
        raise InvalidArgument(
            f"{what} data {path.name}: input {spec.name!r} shape {list(spec.shape)} does not say the image size "
            "and channels (1 or 3); declare it with --input NAME:1x3xHxW"
        )
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if classes:
        files = [
            (f, i)
            for i, d in enumerate(classes)
            for f in sorted(d.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InvalidArgument(
            f"{what} data {path.name}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as img:
                rgb = img.convert("L" if channels == 1 else "RGB").resize((width, height))
                pixels = np.asarray(rgb, dtype=np.uint8)
        except OSError as exc:
            raise InvalidArgument(f"{what} data: {file} is not a readable image: {exc}") from exc
        pixels = pixels.reshape(height, width, channels)
        images.append(pixels.transpose(2, 0, 1) if nchw else pixels)
    batch: np.ndarray = np.stack(images)
    if spec.dtype in (DataType.FLOAT16, DataType.FLOAT32, DataType.FLOAT64):
        batch = batch.astype(spec.dtype.numpy) / np.asarray(255.0, dtype=spec.dtype.numpy)
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return {spec.name: batch}, labels


def _check_array(array: np.ndarray, spec: TensorSpec, axis: int | None, source: str, what: str) -> np.ndarray:
    sample = _per_sample(spec.shape, axis)
    expected = "(" + ", ".join(["N", *(str(d) if d > 0 else "?" for d in sample)]) + ")"
    where = (
        "one value per sample: the input has no batch axis"
        if axis is None
        else "N samples along the first axis"
        + (f"; the model's batch axis {axis} is left out" if axis else "")
    )
    if (spec.shape or axis is None) and (
        array.ndim != len(sample) + 1
        or any(want > 0 and got != want for want, got in zip(sample, array.shape[1:], strict=True))
    ):
        raise InvalidArgument(
            f"{what} data {source}: input {spec.name!r} has shape {tuple(array.shape)} but the model expects "
            f"{expected} ({where})"
        )
    want = spec.dtype.numpy
    if array.dtype.kind in "fc" and want.kind in "iu":
        raise InvalidArgument(
            f"{what} data {source}: input {spec.name!r} holds {array.dtype} values but the model takes {spec.dtype.name}"
        )
    if array.dtype.kind not in "fiub":
        raise InvalidArgument(
            f"{what} data {source}: input {spec.name!r} has unsupported dtype {array.dtype}"
        )
    return np.ascontiguousarray(array.astype(want, copy=False))


def _check_labels(labels: np.ndarray, count: int, source: str, what: str) -> np.ndarray:
    flat = labels.reshape(-1)
    if flat.shape[0] != count:
        raise InvalidArgument(f"{what} data {source}: {flat.shape[0]} labels for {count} samples")
    if flat.dtype.kind == "f" and not np.all(np.equal(np.mod(flat, 1), 0)):
        raise InvalidArgument(f"{what} data {source}: labels must be integer class indices")
    if flat.dtype.kind not in "fiu":
        raise InvalidArgument(f"{what} data {source}: labels must be integer class indices, got {flat.dtype}")
    return flat.astype(np.int64)
