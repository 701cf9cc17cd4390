"""Load MedMNIST-format ``<name>.npz`` files, check them, and build the brain MRI file.

Every dataset is read the same way, so a file we never saw works with no code
change: the presets below only add class names and say how to get the file.
Images stay ``uint8`` on disk and become float tensors in [-1, 1] (the range of
the generator's tanh) only when a model needs them.

Command line::

    python -m hfgan_core.data check pneumoniamnist [--data-dir DIR] [--download]
    python -m hfgan_core.data build-brainmri --from KAGGLE_FOLDER [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
SPLITS = ("train", "val", "test")
BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@dataclass(frozen=True)
class Preset:
    class_names: tuple[str, ...]
    how_to_get: str


_MEDMNIST_HINT = ("fetch it with `python -m hfgan_core.data check {name} --download --data-dir {dir}` (through the "
                  "medmnist package; `make tables` does this by itself) or copy {file} into {dir}")
_BRAIN_HINT = ("build it from the Kaggle 'Brain Tumor MRI Dataset' folders with "
               "`python -m hfgan_core.data build-brainmri --from <folder with Training/ and Testing/> --out {dir}`")
PRESETS: dict[str, Preset] = {
    "pneumoniamnist": Preset(("normal", "pneumonia"), _MEDMNIST_HINT),
    "retinamnist": Preset(("grade 0", "grade 1", "grade 2", "grade 3", "grade 4"), _MEDMNIST_HINT),
    "brainmri": Preset(BRAIN_CLASSES, _BRAIN_HINT),
    "brainmri_64": Preset(BRAIN_CLASSES, _BRAIN_HINT),
}


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) float in [-1, 1] and (N,) long labels."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return x.contiguous(), torch.from_numpy(self.labels)


@dataclass
class MedicalDataset:
    name: str
    path: Path
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.images.shape[3]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[1]

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``--data-dir`` beats ``HFGAN_DATA_DIR`` beats ``data/``."""
    return Path(data_dir or os.environ.get("HFGAN_DATA_DIR") or "data")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> MedicalDataset:
    """Read and validate ``<data_dir>/<name>.npz``; download only when asked."""
    directory = resolve_data_dir(data_dir)
    path = directory / f"{name}.npz"
    if not path.exists():
        if download and _medmnist_flag(name) is not None:
            download_medmnist(name, directory)
        else:
            raise UserError(f"{path} not found: {_how_to_get(name, directory)}")
    arrays = _read_npz(path)
    splits = {s: _validate_split(path, s, arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
    _check_consistent(path, splits)
    class_names = _class_names(name, splits)
    for s, split in splits.items():
        if split.labels.max() >= len(class_names):
            raise UserError(f"{path}: {s}_labels holds label {int(split.labels.max())} but {name} has "
                            f"{len(class_names)} classes; the file does not match its name")
    return MedicalDataset(name, path, splits["train"], splits["val"], splits["test"], class_names)


def _how_to_get(name: str, directory: Path) -> str:
    preset = PRESETS.get(name)
    if preset is not None:
        return preset.how_to_get.format(file=f"{name}.npz", dir=directory, name=name)
    if _medmnist_flag(name) is not None:
        return _MEDMNIST_HINT.format(file=f"{name}.npz", dir=directory, name=name)
    return f"put a MedMNIST-format {name}.npz there, or point --data-dir / HFGAN_DATA_DIR at its folder"


def load_split(path: str | os.PathLike, split: str = "train") -> Split:
    """One split of a MedMNIST-format file, checked like a whole dataset: e.g. the synthetic
    datasets that ``train`` and the benchmark write (they hold a train split only)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; pass the path of a MedMNIST-format .npz file")
    keys = (f"{split}_images", f"{split}_labels")
    arrays = _read_npz(path, keys)
    return _validate_split(path, split, *(arrays[k] for k in keys))


def _read_npz(path: Path, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path}: missing key(s) {', '.join(missing)}; a MedMNIST-format file "
                                f"needs {', '.join(keys)}")
            return {k: npz[k] for k in keys}
    except UserError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); "
                        "the file is truncated or corrupt, fetch or build it again") from None


def _validate_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> Split:
    where = f"{path}: {split}"
    if images.dtype != np.uint8:
        raise UserError(f"{where}_images has dtype {images.dtype}; MedMNIST format needs uint8 pixels 0-255")
    if images.ndim == 3:
        images = images[..., None]
    elif not (images.ndim == 4 and images.shape[3] == 3):
        raise UserError(f"{where}_images has shape {images.shape}; expected (N,H,W) grayscale or (N,H,W,3) RGB")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim != 1:
        raise UserError(f"{where}_labels has shape {labels.shape}; expected (N,1) or (N,) class indices "
                        "(multi-label files are not supported)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}_labels has dtype {labels.dtype}; expected integer class indices")
    if len(images) == 0:
        raise UserError(f"{where} split is empty; every split needs at least one image")
    if len(images) != len(labels):
        raise UserError(f"{where} has {len(images)} images but {len(labels)} labels; they must match one to one")
    if labels.min() < 0:
        raise UserError(f"{where}_labels holds negative label {int(labels.min())}; labels are 0..K-1")
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def _check_consistent(path: Path, splits: dict[str, Split]) -> None:
    shapes = {s: sp.images.shape[1:] for s, sp in splits.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(f"{path}: splits disagree on image shape {shapes}; all splits need one shape")


def _class_names(name: str, splits: dict[str, Split]) -> tuple[str, ...]:
    if name in PRESETS:
        return PRESETS[name].class_names
    info = _medmnist_info(name)
    if info is not None:
        return tuple(info["label"][str(i)] for i in range(len(info["label"])))
    k = int(max(sp.labels.max() for sp in splits.values())) + 1
    present = len(np.unique(splits["train"].labels))
    if present < k:  # e.g. one label 10^9: not K classes a GAN could learn, and 10^9 class names
        raise UserError(f"{name}.npz: labels run up to {k - 1}, but the training split holds only {present} distinct "
                        f"classes; number the classes 0..K-1, each with training images")
    return tuple(f"class {i}" for i in range(k))


# ---------------------------------------------------------------------------------------------
# MedMNIST download (never implicit)

def _medmnist_flag(name: str) -> tuple[str, int] | None:
    """``pneumoniamnist_64`` -> ("pneumoniamnist", 64), or None when medmnist does not know it."""
    flag, _, size = name.partition("_")
    try:
        from medmnist import INFO
    except ImportError:
        return None
    if flag not in INFO or (size and size not in ("64", "128", "224")):
        return None
    return flag, int(size or 28)


def _medmnist_info(name: str) -> dict | None:
    found = _medmnist_flag(name)
    if found is None:
        return None
    from medmnist import INFO
    return INFO[found[0]]


def download_medmnist(name: str, directory: Path) -> Path:
    """Fetch ``<name>.npz`` through the medmnist package (from MedMNIST's Zenodo record), saying
    what and where; verify its MD5 against medmnist's registry, its keys and its split sizes; only
    then move it into ``directory`` (a failed or corrupt download leaves nothing behind)."""
    found = _medmnist_flag(name)
    if found is None:
        raise UserError(f"--download only fetches MedMNIST sets and '{name}' is not one; "
                        f"{_how_to_get(name, directory)}")
    flag, size = found
    import medmnist
    info = medmnist.INFO[flag]
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info[f"url{suffix}"], info[f"MD5{suffix}"]
    print(f"fetching {name}.npz (MedMNIST, {info['license']}) from {url.split('?')[0]} into {directory}/",
          file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.npz"
    with tempfile.TemporaryDirectory(dir=directory, prefix=f".{name}-download-") as tmp:
        got = Path(tmp) / f"{name}.npz"
        try:
            getattr(medmnist, info["python_class"])(split="train", root=tmp, download=True, size=size)
        except Exception:  # network errors and medmnist's own checksum error come in many types
            if not got.exists():
                raise UserError(f"downloading {name} failed (no connection to {url.split('/')[2]}?); check the "
                                f"network or copy {name}.npz into {directory}") from None
        _verify_download(got, md5, info["n_samples"])
        got.replace(target)
    return target


def _verify_download(path: Path, md5: str, n_samples: dict[str, int]) -> None:
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if digest != md5:
        raise UserError(f"downloaded {path.name} is corrupt (MD5 {digest}, medmnist lists {md5}); "
                        "run again, or fetch it by hand from MedMNIST's Zenodo record")
    arrays = _read_npz(path)
    for split, n in n_samples.items():
        if len(arrays[f"{split}_labels"]) != n:
            raise UserError(f"downloaded {path.name} has {len(arrays[f'{split}_labels'])} {split} images, "
                            f"medmnist lists {n}; run again, or fetch it by hand")


# ---------------------------------------------------------------------------------------------
# Data-quality check

def duplicate_groups(ds: MedicalDataset) -> list[list[tuple[str, int]]]:
    """Groups of byte-identical images as (split, index) lists; reported, never removed."""
    seen: dict[bytes, list[tuple[str, int]]] = {}
    for s in SPLITS:
        for i, img in enumerate(ds.split(s).images):
            seen.setdefault(hashlib.sha1(img.tobytes()).digest(), []).append((s, i))
    return [g for g in seen.values() if len(g) > 1]


def quality_report(ds: MedicalDataset) -> str:
    groups = duplicate_groups(ds)
    cross = [g for g in groups if len({s for s, _ in g}) > 1]
    extra = sum(len(g) - 1 for g in groups)
    lines = [f"{ds.name}: {ds.path}",
             f"  images {ds.image_size}x{ds.image_size}x{ds.channels}, {ds.num_classes} classes: "
             + ", ".join(ds.class_names)]
    for s in SPLITS:
        counts = np.bincount(ds.split(s).labels, minlength=ds.num_classes)
        lines.append(f"  {s:5s} {len(ds.split(s)):6d}  per class " + " ".join(str(c) for c in counts))
    lines.append(f"  exact duplicates: {len(groups)} groups ({extra} extra copies), "
                 f"{len(cross)} groups span splits (left as they are)")
    for g in cross:
        lines.append("    " + ", ".join(f"{s}[{i}]" for s, i in g))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Brain MRI converter: implements ../shared/data/README.md "The full conversion" step by step.

def _grayscale(path: Path) -> np.ndarray:
    """Full-resolution grayscale pixels; RGBA, LA and palette images composited onto black first."""
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _pad_and_resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Centered zero-padding to a square (keeps the aspect ratio), then LANCZOS to size x size."""
    from PIL import Image
    h, w = gray.shape
    side = max(h, w)
    square = Image.new("L", (side, side), 0)
    square.paste(Image.fromarray(gray), ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def build_brainmri(source: Path, out_dir: Path) -> list[dict]:
    """Write brainmri.npz, brainmri_64.npz and brainmri_manifest.csv; return the manifest rows."""
    source = Path(source)
    listing: dict[str, list[tuple[Path, int]]] = {}
    for folder in ("Training", "Testing"):
        if not (source / folder).is_dir():
            raise UserError(f"{source} has no {folder}/ folder; point --from at the Kaggle download "
                            "that holds Training/<class>/*.jpg and Testing/<class>/*.jpg")
        listing[folder] = [(p, label) for label, cls in enumerate(BRAIN_CLASSES)
                           for p in sorted((source / folder / cls).glob("*.jpg"), key=lambda p: p.name)]
    train_all = listing["Training"]
    rng_val = np.random.default_rng(0)
    val_idx: set[int] = set()
    for label in range(len(BRAIN_CLASSES)):
        idx = np.array([i for i, (_, y) in enumerate(train_all) if y == label])
        if len(idx):
            val_idx.update(rng_val.choice(idx, round(0.1 * len(idx)), replace=False).tolist())
    splits = {"train": [r for i, r in enumerate(train_all) if i not in val_idx],
              "val": [r for i, r in enumerate(train_all) if i in val_idx],
              "test": listing["Testing"]}
    rng_shuffle = np.random.default_rng(1)
    splits = {s: [rows[j] for j in rng_shuffle.permutation(len(rows))] for s, rows in splits.items()}

    seen: set[str] = set()
    arrays: dict[str, dict[str, list]] = {}
    manifest: list[dict] = []
    for s in SPLITS:
        arrays[s] = {"x28": [], "x64": [], "y": []}
        for path, label in splits[s]:
            gray = _grayscale(path)
            digest = hashlib.sha1(gray.tobytes()).hexdigest()[:12]
            if digest in seen:
                continue
            seen.add(digest)
            manifest.append({"split": s, "index": len(arrays[s]["y"]), "label": label,
                             "class": BRAIN_CLASSES[label],
                             "source_file": path.relative_to(source).as_posix(), "pixel_sha1_12": digest})
            arrays[s]["x28"].append(_pad_and_resize(gray, 28))
            arrays[s]["x64"].append(_pad_and_resize(gray, 64))
            arrays[s]["y"].append(label)
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, key in (("", "x28"), ("_64", "x64")):
        payload = {}
        for s in SPLITS:
            size = 28 if key == "x28" else 64
            payload[f"{s}_images"] = np.array(arrays[s][key], dtype=np.uint8).reshape(-1, size, size)
            payload[f"{s}_labels"] = np.array(arrays[s]["y"], dtype=np.uint8).reshape(-1, 1)
        _atomic_savez(out_dir / f"brainmri{suffix}.npz", payload)
    with open(out_dir / "brainmri_manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]) if manifest else ["split"])
        writer.writeheader()
        writer.writerows(manifest)
    return manifest


def _atomic_savez(path: Path, payload: dict[str, np.ndarray]) -> None:
    """Write then rename, so a crash never leaves a half-written archive behind."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **payload)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfgan_core.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a dataset and report exact duplicates")
    check.add_argument("name")
    check.add_argument("--data-dir")
    check.add_argument("--download", action="store_true", help="fetch MedMNIST sets through medmnist")
    build = sub.add_parser("build-brainmri", help="build brainmri*.npz from the Kaggle folders")
    build.add_argument("--from", dest="source", required=True)
    build.add_argument("--out", default=None, help="output folder (default: the data directory)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(quality_report(load_dataset(args.name, args.data_dir, download=args.download)))
        else:
            out = Path(args.out) if args.out else resolve_data_dir()
            rows = build_brainmri(Path(args.source), out)
            print(f"wrote {out}/brainmri.npz, brainmri_64.npz and brainmri_manifest.csv ({len(rows)} images)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
