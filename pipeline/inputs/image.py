"""Input kind ``image``: image files sent as their raw bytes, as a TorchServe client posts them.

Two layouts: a manifest (CSV or Parquet) with a path column relative to the manifest's
folder, or an ImageFolder-style folder whose sorted sub-folder names are the classes. Only
paths are held in memory; each file is read when its chunk is scored or sent.

The default reference preprocessing is TorchServe 0.12's ``image_classifier``:
``Image.open`` on the bytes (no ``convert("RGB")``), Resize(256), CenterCrop(224),
ToTensor, Normalize with the ImageNet mean and std. A model trained otherwise names its own
``model.preprocess``.
"""

from __future__ import annotations

import base64
import errno
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DatasetError
from pipeline.names import name_classes
from pipeline.inputs.base import FileBodies, Reference, Rows, check_ids, task_labels, no_rows, read_table
from pipeline.spec import Spec

NAME = "image"
CONTENT_TYPE = "application/octet-stream"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def folder_classes(root: Path) -> list[str]:
    """The classes of an ImageFolder layout: its sub-folder names, sorted (as torchvision's ImageFolder
    orders them), hidden ones left out. One rule for the dataset stage and for ``init``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class FolderImages:
    """Every file under an ImageFolder's class folders: the image files per class, the rest by suffix."""

    classes: list[str]
    files: dict[str, list[Path]]  # class -> its image files, sorted; paths as found (through links)
    other_files: dict[str, int]  # suffix ('' for none) -> count of files that are not read as images

    @property
    def image_count(self) -> int:
        return sum(len(v) for v in self.files.values())


def _image_entry_problem(path: Path) -> str | None:
    """Why an image entry cannot be read, or None. stat follows links: a dangling link is ENOENT, a
    link loop ELOOP; a FIFO or device would block or never end if read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"a link to {os.readlink(path)!r}, which does not exist" if path.is_symlink() else "does not exist"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (it points back at itself)"
        return f"cannot be read: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return None


def folder_images(root: Path) -> FolderImages:
    """Walk each class folder as torchvision's ImageFolder does (``os.walk(followlinks=True)``), so
    images added through a symlinked folder or file are read, sorted per class. One walk for the dataset
    stage and ``init``.

    Raises:
        DatasetError: a folder reached twice (a link loop, or one folder linked into two places: its
            images would count twice), a folder that cannot be listed, or image entries that are
            dangling or looping links, unreadable, or not regular files; each named.
    """
    classes = folder_classes(root)
    files: dict[str, list[Path]] = {}
    others: dict[str, int] = {}
    bad: list[str] = []
    visited: dict[str, Path] = {}  # real path -> the first path it was reached by

    def walk_error(e: OSError) -> None:
        bad.append(f"{Path(e.filename).relative_to(root) if e.filename else root}: folder cannot be listed: "
                   f"{e.strerror}")

    for c in classes:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root / c, followlinks=True, onerror=walk_error):
            here = Path(dirpath)
            real = os.path.realpath(here)
            if real in visited:
                first = visited[real].relative_to(root)
                inside = here.as_posix().startswith(visited[real].as_posix() + "/")
                what = "is a loop: a link back to" if inside else "reaches a folder already read:"
                raise DatasetError(
                    f"image folder {root}: {here.relative_to(root)} {what} {real}, already read as {first}. "
                    "Remove the link (or link the folder once) so every image is read once.")
            visited[real] = here
            dirnames.sort()
            for name in filenames:
                f = here / name
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    problem = _image_entry_problem(f)
                    if problem:
                        bad.append(f"{f.relative_to(root)}: {problem}")
                    else:
                        found.append(f)
                else:
                    others[f.suffix.lower()] = others.get(f.suffix.lower(), 0) + 1
        files[c] = sorted(found)
    if bad:
        raise DatasetError(f"image folder {root}: {len(bad)} entr(ies) cannot be read as images. Fix or remove "
                           "them; no image is skipped.", details=bad[:20])
    return FolderImages(classes, files, dict(sorted(others.items())))


def other_files_note(found: FolderImages) -> str | None:
    if not found.other_files:
        return None
    listed = ", ".join(f"{n} {s or '(no suffix)'}" for s, n in found.other_files.items())
    return (f"{sum(found.other_files.values())} file(s) not read as images ({listed}); image suffixes read: "
            f"{' '.join(IMAGE_SUFFIXES)}. Convert any that are images (e.g. .heic) to one of those.")


def _from_folder(spec: Spec, root: Path
                 ) -> tuple[tuple[str, ...], np.ndarray, tuple[Path, ...], list[str], FolderImages]:
    found = folder_images(root)
    classes = found.classes
    if not classes:
        raise DatasetError(
            f"image folder {root} has no class sub-folders. Lay it out as {root}/<class name>/<image files>, "
            "or point dataset.path at a CSV manifest with path and label columns."
        )
    names = spec.model.class_names
    notes = []
    if names is not None:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DatasetError(
                f"image folder {root}: sub-folder(s) {unknown[:10]} are not class names of model.class_names "
                f"{name_classes(names)}. Rename the folders or fix model.class_names."
            )
        index = {n: i for i, n in enumerate(names)}
        notes.append(f"classes from sub-folder names, mapped through model.class_names {name_classes(names)}")
    else:
        if len(classes) > spec.model.num_classes:
            raise DatasetError(
                f"image folder {root} has {len(classes)} class sub-folders but model.num_classes is "
                f"{spec.model.num_classes}: {classes[:12]}."
            )
        index = {c: i for i, c in enumerate(classes)}
        notes.append(f"class order is the sorted sub-folder names: {classes}")
    notes.append(f"{found.image_count} image file(s) found under the {len(classes)} class folder(s) (symlinked "
                 "folders and files followed), each one row")
    other = other_files_note(found)
    if other:
        notes.append(other)
    ids, labels, paths = [], [], []
    for c in classes:
        for f in found.files[c]:
            ids.append(f.relative_to(root).as_posix())
            labels.append(index[c])
            paths.append(f)
    return tuple(ids), np.asarray(labels, np.int64), tuple(paths), notes, found


def _from_manifest(spec: Spec, path: Path, training: bool
                   ) -> tuple[tuple[str, ...], np.ndarray, tuple[Path, ...], list[str]]:
    ds = spec.dataset
    df = read_table(path, "training manifest" if training else "image manifest")
    if ds.path_column not in df.columns:
        raise DatasetError(
            f"{path}: path_column {ds.path_column!r} not found. Columns found: {list(df.columns)[:40]}. "
            "Fix dataset.path_column in the spec."
        )
    if ds.id_column not in df.columns:
        df = df.assign(**{ds.id_column: df[ds.path_column].astype(str)})
    ids = check_ids(df, spec, path)
    if ds.label_column not in df.columns and (training or ds.annotations is None):
        if not training:
            raise DatasetError(
                f"{path}: label_column {ds.label_column!r} not found. Columns found: {list(df.columns)[:40]}. "
                "Fix dataset.label_column in the spec."
            )
        labels, notes = np.zeros(len(df), np.int64), []
    else:
        labels, notes = task_labels(df, spec, path, ids)
    paths = tuple((path.parent / str(p)).resolve() if not Path(str(p)).is_absolute() else Path(str(p))
                  for p in df[ds.path_column])
    return ids, labels, paths, notes


def load(spec: Spec, path: Path, *, training: bool = False) -> Rows:
    """Rows of an image manifest or an ImageFolder-style folder.

    Raises:
        DatasetError: the manifest or folder is missing or empty, a path or label column is
            missing, files named by the manifest do not exist (each listed with its id).
    """
    found = None
    if path.is_dir():
        ids, labels, paths, notes, found = _from_folder(spec, path)
    else:
        ids, labels, paths, notes = _from_manifest(spec, path, training)
    if not ids:
        raise no_rows(path)
    # stat, not is_file: a dangling or looping link, a FIFO or an unreadable file is named as such
    missing = [(i, p, why) for i, p in zip(ids, paths) if (why := _image_entry_problem(p))]
    if missing:
        raise DatasetError(
            f"{path}: {len(missing)} image file(s) do not exist or cannot be read (paths are relative to the "
            "manifest's folder). Fix the manifest or restore the files.",
            details=[f"id {i}: {p}: {why}" for i, p, why in missing[:20]],
        )
    return Rows(kind=NAME, source=path, ids=ids, labels=labels, content_type=CONTENT_TYPE,
                bodies=FileBodies(paths), paths=paths, notes=tuple(notes),
                image_files=found.image_count if found is not None else len(paths),
                other_files=tuple(found.other_files.items()) if found is not None else ())


def image_classifier_transforms():
    """TorchServe 0.12's ``ImageClassifier.image_processing``, built from torchvision."""
    from pipeline.compat import import_torchvision

    import_torchvision()
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ])


def vision_handler_input(view: Any, transform) -> Any:
    """What TorchServe 0.12's ``VisionHandler.preprocess`` does with one row (before stacking)."""
    import torch
    from PIL import Image

    if isinstance(view, str):
        view = base64.b64decode(view)
    if isinstance(view, (bytes, bytearray)):
        return transform(Image.open(io.BytesIO(view)))
    return torch.FloatTensor(view)


NOT_RGB_FIX = ("TorchServe's built-in image_classifier opens images without .convert(\"RGB\") (serve #65), so "
              "its Normalize with 3 channel means fails on this image. Convert the images to RGB (PIL: "
              "Image.open(p).convert(\"RGB\").save(p)), or use a handler and a model.preprocess that call "
              ".convert(\"RGB\")")


def image_mode(body: bytes) -> str | None:
    """The PIL mode of an image's bytes (only the header is read), or None if PIL cannot open it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as im:
            return im.mode
    except Exception:
        return None


def builtin_reference() -> Reference:
    transform = image_classifier_transforms()

    def image_classifier(view: Any):
        try:
            return vision_handler_input(view, transform)
        except Exception as e:
            # The known trap, named with its fix, rather than torch's broadcast error.
            mode = image_mode(view) if isinstance(view, (bytes, bytearray)) else None
            if mode is not None and mode != "RGB":
                raise ValueError(f"image mode {mode}: {NOT_RGB_FIX}") from e
            raise

    return Reference(
        "builtin:image_classifier",
        "TorchServe 0.12 image_classifier: PIL open (no RGB conversion), Resize(256), CenterCrop(224), "
        "ToTensor, Normalize(ImageNet mean/std)",
        image_classifier,
    )


def object_detector_reference() -> Reference:
    """TorchServe 0.12's ``ObjectDetector.image_processing``: ToTensor only (the image's own size)."""
    from pipeline.compat import import_torchvision

    import_torchvision()
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor()])
    return Reference("builtin:object_detector",
                     "TorchServe 0.12 object_detector: PIL open (no RGB conversion), ToTensor (no resize)",
                     lambda view: vision_handler_input(view, transform))


def image_segmenter_reference() -> Reference:
    """TorchServe 0.12's ``ImageSegmenter.image_processing``: the image classifier's transforms."""
    transform = image_classifier_transforms()
    return Reference("builtin:image_segmenter",
                     "TorchServe 0.12 image_segmenter: PIL open (no RGB conversion), Resize(256), CenterCrop(224), "
                     "ToTensor, Normalize(ImageNet mean/std)",
                     lambda view: vision_handler_input(view, transform))


def default_reference(spec: Spec) -> Reference | None:
    return builtin_reference()


def _encode(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif_rotated(rgb, orientation: int = 6) -> bytes:
    """A JPEG whose pixels are stored turned, with the EXIF orientation saying how to show it upright
    (what phone cameras write): a handler that honours EXIF sees the original."""
    from PIL import Image

    from pipeline.inputs.orientation import ORIENTATION_TAG, stored_image

    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return _encode(stored_image(rgb, orientation), "JPEG", quality=95, exif=exif.tobytes())


def _noise_png(min_bytes: int) -> bytes:
    """A PNG of random pixels (it does not compress) larger than ``min_bytes``."""
    import math

    import numpy as np
    from PIL import Image

    side = int(math.sqrt(min_bytes / 3)) + 64
    pixels = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels, "RGB"), "PNG", compress_level=1)


def handler_probes(rows: Rows, spec: Spec, index: int = 0) -> list:
    """Other modes and encodings of one row's image, tiny and huge sizes, one above max_request_size.

    A variant whose pixels equal the original's (RGBA, an exact palette, grayscale of a gray
    image) or that only re-encodes it (JPEG, CMYK, EXIF orientation) must get the original's
    class; a lossy change of content (grayscale of a colour image, a 4x4 thumbnail) may get any
    answer, but not a crash.
    """
    import numpy as np
    from PIL import Image

    from pipeline.inputs.probes import ANSWER, REFUSE, SAME, HandlerProbe

    with Image.open(io.BytesIO(rows.body(index))) as im:
        rgb = im.convert("RGB")
    pixels = np.asarray(rgb)
    is_gray = bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    exact_palette = bool((np.asarray(palette.convert("RGB")) == pixels).all())
    ct = CONTENT_TYPE
    limit = spec.serving.max_request_size
    return [
        HandlerProbe("grayscale (mode L) PNG", _encode(rgb.convert("L"), "PNG"), ct, SAME if is_gray else ANSWER,
                     index, note="" if is_gray else "the original has colour: grayscale changes the content"),
        HandlerProbe("RGBA PNG", _encode(rgb.convert("RGBA"), "PNG"), ct, SAME, index),
        HandlerProbe("palette (mode P) PNG", _encode(palette, "PNG"), ct, SAME if exact_palette else ANSWER, index),
        HandlerProbe("CMYK JPEG", _encode(rgb.convert("CMYK"), "JPEG", quality=95), ct, SAME, index),
        HandlerProbe("EXIF-rotated JPEG (orientation 6)", _exif_rotated(rgb, 6), ct, SAME, index,
                     note="shown upright by any viewer; a handler that ignores EXIF sees it rotated",
                     orientation=6, upright_size=rgb.size),
        HandlerProbe("re-encoded JPEG (quality 90)", _encode(rgb, "JPEG", quality=90), ct, SAME, index),
        HandlerProbe("very small image (4x4)", _encode(rgb.resize((4, 4)), "PNG"), ct, ANSWER, index),
        HandlerProbe("very large image (4000x4000)", _encode(rgb.resize((4000, 4000), Image.Resampling.NEAREST),
                                                             "PNG"), ct, ANSWER, index),
        HandlerProbe(f"above max_request_size ({limit} bytes)", _noise_png(limit + 1), ct, REFUSE, index,
                     stages=("served",), note="TorchServe's frontend refuses it before the handler"),
    ]
