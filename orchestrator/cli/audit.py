"""`python -m orchestrator.audit`: does a folder of synthetic X-rays (or a generator) copy the training set?

    python -m orchestrator.audit --synthetic synth/ --data ../shared/data/covid19-radiography-subset \\
        [--heldout DIR] [--space pixel|inception] [--q 0.05] [--k 5] [--top 8] [--json FILE] [--out DIR]
    python -m orchestrator.audit --generator models:/cxr-acgan-generator@champion --data ...

Reads the synthetic images (PNG/JPEG, recursively, e.g. what `python -m orchestrator.generate`
writes; with --generator, images it draws first into <out>/synthetic), the training images of --data through the project's data loader (the fit set of
`load_selection_sets`, what a search trains on) and held-out real images (--heldout, a
folder of images; by default the source's validation hold-out, never its test split). All
are compared at one resolution, in pixel space (32 px grey thumbnails) or Inception space,
and the command prints the memorised share (`trainables.metrics.memorisation`), PRDC and the
most-copied pairs, and writes a JSON and `most_copied.png`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orchestrator.cli import check_out_folder
from orchestrator.cli.search import HelpFormatter, add_class_options

SUFFIXES = (".png", ".jpg", ".jpeg")
SPACES = ("pixel", "inception")
# trainables.metrics.memorisation's defaults, written here so that --help imports no torch
# (tests/test_memorisation.py checks they agree).
DEFAULT_Q, DEFAULT_K = 0.05, 5


class AuditError(Exception):
    """A problem with the user's inputs: printed as one `error:` line, exit code 2."""


EXAMPLES = """examples:
  python -m orchestrator.audit --synthetic synth/ --data ../shared/data/covid19-radiography-subset
  python -m orchestrator.audit --generator models:/cxr-acgan-generator@champion \\
      --data ../shared/data/covid19-radiography-subset --space inception --json audit.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.audit",
                                description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=HelpFormatter)
    what = p.add_argument_group("the synthetic images")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", help="folder of synthetic PNG/JPEG images (read "
                        "recursively)")
    source.add_argument("--generator", help="a generator to draw the images from: "
                        "models:/NAME@ALIAS, NAME@ALIAS, NAME/VERSION, runs:/RUN_ID (looked up "
                        "in --mlflow-uri), or a generator.pt / state.pt / checkpoint folder")
    what.add_argument("--per-class", type=int, default=100, help="with --generator: images "
                      "drawn per class")
    what.add_argument("--mlflow-uri", default=None, help="with --generator: the MLflow store to "
                      "look the model up in (default: the search's default store)")
    real = p.add_argument_group("the real images")
    real.add_argument("--data", default=None, help="the training data source (as for "
                      "`python -m orchestrator.search --data`); required")
    real.add_argument("--heldout", default=None, help="folder of held-out real images "
                      "(default: the source's validation hold-out)")
    real.add_argument("--duplicates", choices=("error", "keep", "drop"), default="keep",
                      help="how the data loader treats byte-identical images")
    add_class_options(real)
    how = p.add_argument_group("the comparison")
    how.add_argument("--space", choices=SPACES, default="pixel", help="pixel: 32 px grey "
                     "standardised thumbnails (fast); inception: 2048-d FID Inception features")
    how.add_argument("--q", type=float, default=DEFAULT_Q, help="quantile of held-out "
                     "nearest-training distances below which a fake is a copy")
    how.add_argument("--k", type=int, default=DEFAULT_K, help="PRDC's k")
    how.add_argument("--resolution", type=int, default=None, help="compare at this size "
                     "(default: the commonest size of the synthetic images)")
    how.add_argument("--device", default="cpu", help="torch device for --space inception")
    out = p.add_argument_group("output")
    out.add_argument("--top", type=int, default=8, help="most-copied pairs to print and draw")
    out.add_argument("--json", default=None, help="write the result here (default "
                     "<out>/audit.json)")
    out.add_argument("--out", default="audit", help="folder for audit.json and most_copied.png")
    return p


def image_files(folder: str | Path) -> list[Path]:
    """PNG/JPEG files under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise AuditError(f"{folder}: no PNG/JPEG images in it (searched recursively)")
    return files


def read_images(files: Sequence[Path], resolution: int | None) -> tuple[np.ndarray, int, int]:
    """(uint8 (N, R, R, 1) grey images, R, how many were resized to R). R defaults to the
    commonest side of the files, so a folder written by one generator is not resized."""
    from trainables.data import DataError
    from trainables.data.preprocess import PreprocessConfig, decode_image, preprocess

    try:
        decoded = [decode_image(f) for f in files]
    except DataError as exc:
        raise AuditError(str(exc)) from None
    if resolution is None:
        resolution = Counter(max(img.size) for img in decoded).most_common(1)[0][0]
    resized = sum(img.size != (resolution, resolution) for img in decoded)
    images = np.stack([preprocess(img, resolution=resolution, channels=1, cfg=PreprocessConfig())
                       for img in decoded])
    return images, resolution, resized


def load_reference(data: str, heldout: str | None, resolution: int, duplicates: str,
                   class_options: dict | None = None):
    """(training ImageSet, held-out uint8 images, held-out description); class_options:
    the loader's exclude_labels= / label_map= / classes= (`orchestrator.config.class_options`)."""
    from trainables.data import DataError
    from trainables.data.selection import load_selection_sets

    if data != "default" and not Path(data).exists():
        raise AuditError(f"--data {data}: no such file or folder")
    try:
        fit, val = load_selection_sets(data, resolution=resolution, channels=1,
                                       duplicates=duplicates, **(class_options or {}))
    except (DataError, ValueError) as exc:
        raise AuditError(f"--data {data}: {exc}") from None
    if heldout is None:
        return fit, np.asarray(val.images), f"{data} [{val.split}]"
    images, _, resized = read_images(image_files(heldout), resolution)
    if resized:
        print(f"note: resized {resized} held-out image(s) to {resolution}x{resolution}")
    return fit, images, heldout


def audit_class_options(a: argparse.Namespace) -> dict:
    """--exclude-classes / --label-map / --classes as the loader's options; AuditError if
    one is malformed (checked before any image is read or drawn)."""
    from orchestrator.config import class_options

    try:
        return class_options(a.exclude_classes, a.label_map, a.classes)
    except ValueError as exc:
        raise AuditError(str(exc)) from None


def features(images: np.ndarray, space: str, extractor=None) -> np.ndarray:
    """Feature rows of uint8 NHWC images in ``space``."""
    from trainables.metrics import memorisation as mem

    if space == "pixel":
        return mem.pixel_features(images)
    return extractor.features(images)[0]


def load_space(space: str, device: str):
    """The Inception extractor for ``space="inception"`` (None for pixels)."""
    if space == "pixel":
        return None
    from trainables.metrics.features import WeightsNotFoundError, load_extractor
    try:
        return load_extractor("auto", dims=2048, device=device)
    except WeightsNotFoundError as exc:
        raise AuditError(str(exc)) from None


def draw_from_generator(spec: str, per_class: int, mlflow_uri: str | None, out: Path,
                        device: str) -> Path:
    """Export ``per_class`` images per class from a registered model, a run or a local
    checkpoint into ``out`` (the same export as `orchestrator.generate`)."""
    from orchestrator.cli.generate import checkpoint_problem
    from trainables.gan.export import export_synthetic

    if per_class < 1:
        raise AuditError(f"--per-class must be >= 1, got {per_class}")
    checkpoint = Path(spec)
    if not checkpoint.exists():
        if spec.endswith((".pt", "/")) or spec.startswith((".", "/")):
            raise AuditError(f"--generator {spec}: no such file or folder")
        checkpoint = registered_generator(spec, mlflow_uri)
    else:
        problem = checkpoint_problem(checkpoint, "--generator")
        if problem:
            raise AuditError(problem)
    if (out / "manifest.csv").exists():
        raise AuditError(f"{out} already holds an export: choose another --out (audits never "
                         "mix images of two generators)")
    try:
        export_synthetic(checkpoint, per_class, out, device=device)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise AuditError(f"--generator {spec}: {exc}") from None
    print(f"drew {per_class} images per class from {spec} into {out}")
    return out


def registered_generator(spec: str, mlflow_uri: str | None) -> Path:
    """generator.pt of a model version or run in MLflow (`generate --model`'s lookup)."""
    from orchestrator.config import DEFAULT_MLFLOW_URI
    from orchestrator.store.models import generator_artifact

    uri = mlflow_uri or DEFAULT_MLFLOW_URI
    try:
        return generator_artifact(spec, uri)
    except LookupError as exc:
        raise AuditError(str(exc)) from None


def copied_pairs(result: dict, fake_names: Sequence[str], train_names: Sequence[str],
                 top: int) -> list[dict]:
    """The ``top`` fakes closest to a training image, closest first."""
    order = np.argsort(result["distances"], kind="stable")[:top]
    return [{"synthetic": str(fake_names[i]), "training": str(train_names[result["nearest"][i]]),
             "training_index": int(result["nearest"][i]),
             "distance": float(result["distances"][i]),
             "copy": bool(result["distances"][i] < result["threshold"])} for i in order]


def audit(fakes: np.ndarray, train: np.ndarray, heldout: np.ndarray, *, space: str, q: float,
          k: int, extractor=None) -> dict:
    """Memorisation and PRDC of uint8 fakes against the training and held-out images."""
    from trainables.metrics import memorisation as mem

    f_fake, f_train, f_held = (features(x, space, extractor) for x in (fakes, train, heldout))
    try:
        result = mem.memorised_share(f_fake, f_train, f_held, q)
        scores = mem.prdc(f_train, f_fake, k=k)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    return {**result, **scores}


def report(result: dict, pairs: list[dict], meta: dict) -> dict:
    """Print the audit and return the JSON-ready summary."""
    summary = {"memorised_share": result["memorised_share"], "n_synthetic": result["n"],
               **{m: result[m] for m in ("precision", "recall", "density", "coverage")},
               "threshold": result["threshold"], "q": result["q"], **meta, "pairs": pairs}
    print(f"memorised share: {result['memorised_share']:.3f} of {result['n']} synthetic images "
          f"(nearest-training distance < {result['threshold']:.4f}, the {result['q']:g}-quantile "
          f"of {meta['n_heldout']} held-out real images; {meta['space']} space)")
    print("PRDC (k={k}): precision {precision:.3f}  recall {recall:.3f}  density {density:.3f}  "
          "coverage {coverage:.3f}".format(k=meta["k"], **result))
    print("most-copied pairs (distance, synthetic -> training):")
    for p in pairs:
        print(f"  {p['distance']:.4f}{' COPY' if p['copy'] else ''}  {p['synthetic']} -> {p['training']}")
    return summary


def run(a: argparse.Namespace) -> dict:
    """The audit the arguments ask for; AuditError on a user error."""
    if not a.data:
        raise AuditError("--data is required: the training data the generator was fitted on")
    options = audit_class_options(a)
    check_out_folder(a.out)
    synthetic = a.synthetic or draw_from_generator(a.generator, a.per_class, a.mlflow_uri,
                                                   Path(a.out) / "synthetic", a.device)
    files = image_files(synthetic)
    fakes, resolution, resized = read_images(files, a.resolution)
    if resized:
        print(f"note: resized {resized} of {len(files)} synthetic image(s) to "
              f"{resolution}x{resolution}, the resolution the data is compared at")
    train, heldout, held_from = load_reference(a.data, a.heldout, resolution, a.duplicates,
                                               options)
    extractor = load_space(a.space, a.device)
    train_images = np.asarray(train.images)
    k = min(a.k, len(fakes) - 1, len(train_images) - 1)  # PRDC needs k < each set's size
    result = audit(fakes, train_images, heldout, space=a.space, q=a.q, k=k,
                   extractor=extractor)
    pairs = copied_pairs(result, [str(f) for f in files], train.paths, a.top)
    meta = {"space": a.space, "k": k,
            "resolution": resolution, "n_training": len(train_images),
            "n_heldout": len(heldout), "heldout": held_from, "data": a.data,
            "data_options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "synthetic": str(synthetic), "generator": a.generator}
    summary = report(result, pairs, meta)
    out = Path(a.out)
    from trainables.figures import save
    from trainables.metrics import memorisation as mem
    top_fakes = fakes[np.argsort(result["distances"], kind="stable")[:a.top]]
    fig_path = save(mem.most_copied_figure(top_fakes, train_images, pairs, result["threshold"]),
                    out / "most_copied.png")
    json_path = Path(a.json) if a.json else out / "audit.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {json_path} and {fig_path}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.config import ConfigError

    a = build_parser().parse_args(argv)
    try:
        run(a)
    except (AuditError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
