"""``ganflow prepare SOURCE DEST``: a folder or zip of images, or a tensorflow-datasets split
(``ganflow.tfds_source``), once, into a prepared dataset (``ganflow.shards``) that training
streams with bounded memory.

Every file is decoded with Pillow, turned upright by its EXIF orientation, its first frame
taken when it has several, brought to the chosen channels (grayscale, RGB, CMYK, palette and
16-bit images converted; alpha composited on ``--background``), cropped (``--crop center``:
the centre square; ``none``: a non-square image is skipped, by name) and resized to
``--resolution`` with an antialiasing Lanczos filter. Labels come from a ``dataset.json`` in
SOURCE (StyleGAN2-ADA's format: ``{"labels": [["dir/file.png", 3], ...]}``), else from the
first-level subfolders when every image is in one and there are several.

The work is split in shards of ``--shard-size`` images, decoded by a pool of processes (one
per core) and written as they come, each under a temporary name renamed when complete.
``DEST/prepare.json`` holds the plan (files, options); run again after an interrupt, the same
command finishes the shards that are missing. The manifest is written last. Every file that
cannot be used is counted and named, with why, in ``DEST/skipped.txt``; an image with
several frames is used and named there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganflow import __version__, shards
from ganflow.errors import UsageError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
PLAN = "prepare.json"
SKIPPED = "skipped.txt"
BACKGROUNDS = {"white": 255, "black": 0}


@dataclass(frozen=True)
class Options:
    resolution: int = 64
    channels: str = "auto"  # auto, 1 or 3
    crop: str = "center"  # center or none
    background: str = "white"
    shard_size: int = 1000
    filter: str = "lanczos"  # Pillow's, antialiased


class Source:
    """The image files of a folder or a zip, by their path inside it, sorted."""

    def __init__(self, text: str):
        self.text = text
        self.path = Path(text).expanduser()
        if self.path.is_dir():
            self.zip = None
            self.names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                                if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif zipfile.is_zipfile(self.path):
            self.zip = self.path
            with zipfile.ZipFile(self.path) as archive:
                self.names = sorted(i.filename for i in archive.infolist()
                                    if not i.is_dir() and Path(i.filename).suffix.lower() in SUFFIXES)
        else:
            raise UsageError(f"{text}: not a folder or a zip file of images")
        if not self.names:
            raise UsageError(f"{text}: no image files ({', '.join(sorted(SUFFIXES))})")
        self._archive = None

    def read(self, name: str) -> bytes:
        """The bytes of the file ``name``."""
        if self.zip is None:
            return (self.path / name).read_bytes()
        if self._archive is None:  # opened once per process
            self._archive = zipfile.ZipFile(self.zip)
        return self._archive.read(name)

    def digest(self) -> str:
        """Of the file list: names, sizes and (in a folder) modification times."""
        h = hashlib.sha256()
        if self.zip:
            with zipfile.ZipFile(self.zip) as archive:
                for name in self.names:
                    info = archive.getinfo(name)
                    h.update(f"{name}\0{info.file_size}\0{info.CRC}\n".encode())
        else:
            for name in self.names:
                stat = (self.path / name).stat()
                h.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    @property
    def location(self) -> str:
        return str(self.path.resolve())

    def labels(self) -> tuple[list[int] | None, list[str] | None]:
        """(label of each file, label names), or (None, None) for unlabelled data: from
        ``dataset.json``, else from first-level subfolders."""
        return plan_labels(self)

    def labels_file(self) -> dict | None:
        """``dataset.json`` at the source's top, if there is one."""
        if self.zip:
            with zipfile.ZipFile(self.zip) as archive:
                if "dataset.json" not in archive.namelist():
                    return None
                return json.loads(archive.read("dataset.json"))
        path = self.path / "dataset.json"
        return json.loads(path.read_text()) if path.exists() else None


def plan_labels(source: Source) -> tuple[list[int] | None, list[str] | None]:
    """(label of each file, label names), or (None, None) for unlabelled data."""
    given = source.labels_file()
    if given is not None:
        pairs = dict((name, label) for name, label in (given.get("labels") or []))
        missing = [n for n in source.names if n not in pairs]
        if missing:
            raise UsageError(f"{source.text}/dataset.json gives no label for {len(missing)} "
                             f"images, e.g. {missing[0]}: label every image, or remove it")
        labels = [int(pairs[n]) for n in source.names]
        return labels, [str(i) for i in range(max(labels) + 1)]
    tops = [n.split("/", 1)[0] if "/" in n else None for n in source.names]
    classes = sorted({t for t in tops if t is not None})
    if len(classes) > 1 and None not in tops:
        return [classes.index(t) for t in tops], classes
    return None, None


def decode(data: bytes, options: Options, mode: str):
    """``data`` (an image file's bytes) as a uint8 array (r, r, channels) and a note (its
    frames), or raise ValueError saying why it cannot be used."""
    import io

    from PIL import Image, ImageOps

    if not data:
        raise ValueError("zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).lower()
        reason = ("truncated" if "truncated" in text else
                  "not an image" if "cannot identify" in text else f"unreadable ({exc})")
        raise ValueError(reason) from None
    width, height = image.size
    if options.crop == "none" and width != height:
        raise ValueError(f"not square ({width}x{height}) and --crop none")
    image = _to_mode(image, mode, BACKGROUNDS[options.background])
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (options.resolution,) * 2, Image.Resampling.LANCZOS)
    array = np.asarray(image, np.uint8)
    note = f"{frames} frames: the first used" if frames > 1 else None
    return (array[..., None] if array.ndim == 2 else array), note


def _to_mode(image, mode: str, background: int):
    """``image`` as ``mode`` ("L" or "RGB"): 16-bit and float scaled to 8 bits, alpha
    composited on ``background``, CMYK and palettes converted."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith("I") and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert(mode)


def colour_mode(source: Source, options: Options) -> str:
    """"L" or "RGB": ``--channels``, or under auto RGB if any image is in a colour mode (a
    tfds dataset's: its image feature's)."""
    if options.channels != "auto":
        return "L" if options.channels == "1" else "RGB"
    if getattr(source, "channels", None):
        return "L" if source.channels == 1 else "RGB"
    import io

    from PIL import Image

    for name in source.names:
        try:
            with Image.open(io.BytesIO(source.read(name))) as image:
                if image.mode not in GRAY_MODES:
                    return "RGB"
        except Exception:  # noqa: BLE001 - unreadable: the prepare names it
            continue
    return "L"


def _shard_job(job):
    """In a worker process: decode one shard's files. Returns (index, images, labels, notes,
    skipped) with notes and skipped as (name, why) pairs."""
    index, source, names, labels, options, mode = job
    if isinstance(source, str):  # a folder's or zip's path: its listing made once a process
        source = _SOURCES.get(source) or _SOURCES.setdefault(source, Source(source))
    images, kept_labels, notes, skipped = [], [], [], []
    for name, label in zip(names, labels):
        try:
            array, note = decode(source.read(name), options, mode)
        except ValueError as exc:
            skipped.append((name, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file never stops a prepare
            skipped.append((name, f"unreadable ({type(exc).__name__}: {exc})"))
            continue
        images.append(array)
        kept_labels.append(label)
        if note:
            notes.append((name, note))
    shape = (0, options.resolution, options.resolution, 1 if mode == "L" else 3)
    return (index, np.stack(images) if images else np.zeros(shape, np.uint8),
            np.asarray(kept_labels, np.int64), notes, skipped)


_SOURCES: dict[str, Source] = {}  # per worker process: the source's listing, made once


def open_source(text, data_dir: str | None = None):
    """The images of SOURCE: ``tfds:NAME[SLICE]`` (``data_dir``: tfds's), a folder or a zip;
    a source already opened as it is."""
    if not isinstance(text, str):
        return text
    if text.startswith("tfds:"):
        from ganflow.tfds_source import TfdsImages

        return TfdsImages(text, data_dir)
    return Source(text)


def prepare(source, dest: str, options: Options, workers: int | None = None,
            progress=None, data_dir: str | None = None) -> tuple[shards.Manifest, dict]:
    """Prepare ``source`` (SOURCE's text, or the source ``open_source`` opened) into ``dest``
    (see the module docstring). ``progress(n)`` is told of each n images done. Returns the
    manifest and the reasons files were skipped, counted."""
    from multiprocessing import get_context

    source = open_source(source, data_dir)
    folder = Path(dest).expanduser()
    labels, label_names = source.labels()
    mode = colour_mode(source, options)
    plan = {"source_digest": source.digest(), "options": options.__dict__, "mode": mode,
            "names": source.names, "labels": labels}
    _start(folder, plan)
    count = len(source.names)
    per = options.shard_size
    sent = source.text if isinstance(source, Source) else source  # each worker opens it
    jobs = [(i, sent, source.names[s:s + per],
             (labels or [0] * count)[s:s + per], options, mode)
            for i, s in enumerate(range(0, count, per))]
    done = {j[0] for j in jobs if (folder / _shard_name(j[0])).exists()}
    log = _read_log(folder)
    if progress:
        progress(sum(len(j[2]) for j in jobs if j[0] in done))
    todo = [j for j in jobs if j[0] not in done]
    workers = workers or os.cpu_count() or 1
    with get_context("spawn").Pool(min(workers, max(len(todo), 1))) as pool:
        for index, images, kept, notes, skipped in pool.imap_unordered(_shard_job, todo):
            shards.write_shard(folder / _shard_name(index), images, kept)
            log[str(index)] = {"count": len(images), "notes": notes, "skipped": skipped}
            _write_log(folder, log)  # after the shard: a shard on disk is always in the log
            if progress:
                progress(len(images) + len(skipped))
    entries = [log[str(j[0])] for j in jobs]
    skipped = [pair for e in entries for pair in e["skipped"]]
    notes = [pair for e in entries for pair in e["notes"]]
    kept = sum(e["count"] for e in entries)
    if not kept:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(_reasons(skipped).items()))
        raise UsageError(f"{source.text}: none of its {count} image files could be read "
                         f"({why})")
    _write_report(folder, skipped, notes)
    manifest = shards.Manifest(
        count=kept, resolution=options.resolution, channels=1 if mode == "L" else 3,
        shards=[{"file": _shard_name(j[0]), "count": log[str(j[0])]["count"]} for j in jobs
                if log[str(j[0])]["count"]],
        label_names=label_names, source=source.location,
        source_digest=plan["source_digest"], options=options.__dict__, skipped=len(skipped),
        ganflow=__version__)
    for j in jobs:  # shards left empty by skipped files are not part of the dataset
        if not log[str(j[0])]["count"]:
            (folder / _shard_name(j[0])).unlink(missing_ok=True)
    manifest.write(folder)
    return manifest, _reasons(skipped)


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.tfrecord"


def _start(folder: Path, plan: dict) -> None:
    """Begin, or go on with, a prepare into ``folder``: the same plan only."""
    path = folder / PLAN
    if (folder / shards.MANIFEST).exists():
        raise UsageError(f"{folder} is a prepared dataset already: train on it with --dataset "
                         f"prepared:{folder}, or pick another DEST")
    if path.exists():
        if json.loads(path.read_text()) != plan:
            raise UsageError(f"{folder} holds an unfinished prepare of other files or "
                             "options: pick another DEST, or delete it")
        return
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty: pick a new folder for DEST")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{PLAN}.tmp"
    staging.write_text(json.dumps(plan))
    os.replace(staging, path)


def _read_log(folder: Path) -> dict:
    path = folder / "shards.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_log(folder: Path, log: dict) -> None:
    staging = folder / ".shards.json.tmp"
    staging.write_text(json.dumps(log))
    os.replace(staging, folder / "shards.json")


def _write_report(folder: Path, skipped, notes) -> None:
    lines = [f"skipped\t{name}\t{why}" for name, why in skipped]
    lines += [f"used\t{name}\t{note}" for name, note in notes]
    (folder / SKIPPED).write_text("".join(line + "\n" for line in lines))


def _reasons(skipped) -> dict:
    """Skipped files counted by why (the reason's first words)."""
    counts: dict[str, int] = {}
    for _, why in skipped:
        key = why.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def cached(source_text: str, resolution: int | None = None, default_resolution: int = 64,
           log=None):
    """``source_text`` prepared once into the cache folder (``prepared/KEY`` there, KEY from
    the source's file list and the options), then streamed: what ``folder:PATH`` trains on.
    The resolution is ``resolution``, else the images' own when they are all one square
    size, else ``default_resolution``."""
    from ganflow.evaluation import cache_dir

    source = Source(source_text)
    options = Options(resolution=resolution or _one_square_size(source) or default_resolution)
    key = hashlib.sha256(json.dumps([source.digest(), options.__dict__]).encode()).hexdigest()
    folder = cache_dir() / "prepared" / key[:16]
    if not (folder / shards.MANIFEST).exists():
        if log:
            log(f"Preparing {len(source.names):,} images of {source_text} once, into {folder} "
                "(later runs stream them from there)")
        try:
            prepare(source, str(folder), options)
        except UsageError as exc:  # nothing usable: the cache keeps no half
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            raise exc from None
    data = shards.prepared(folder)
    manifest = shards.read_manifest(folder)
    data.info.update(images_read=manifest.count, images_skipped=manifest.skipped)
    return data


def _one_square_size(source: Source) -> int | None:
    """The side of the images when they are all one square size (read from their headers)."""
    import io

    from PIL import Image

    sizes = set()
    for name in source.names:
        try:
            with Image.open(io.BytesIO(source.read(name))) as image:
                sizes.add(image.size)
        except Exception:  # noqa: BLE001 - unreadable: the prepare names it
            continue
        if len(sizes) > 1:
            return None
    (size,) = sizes or {(0, 1)}
    return size[0] if size[0] == size[1] else None
