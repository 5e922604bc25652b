"""Does the GAN help a classifier on an imbalanced chest X-ray set?  One answer, through the
product (the search command's own code paths, MLflow included).

    python -m benchmarks.augmentation_answer            # about 1 hour on 2 CPU cores
    python -m benchmarks.augmentation_answer --quick    # a few minutes: the pipeline, no answer

On `covid19-radiography-subset` (COVID-19 1,500 / Normal 1,500) COVID-19 is made rare in the
training split only (`--minority COVID-19=0.2`: 20 % of its training images kept; validation
and test images untouched).  Then:

1. a GAN search on exactly that reduced training data (the folder the study's `--minority`
   makes), so the generator never saw a COVID-19 image the classifiers lost: AC-GAN at the
   budget that learns on 2 cores (README "GAN training"; `benchmarks/gan_learns.py`): 64 px,
   grey, width 0.5, 40 batches per epoch, 20 epochs, 2 trials side by side;
2. the classifier study with every strategy and 5 seeds at 32 px (S0's CNN, up to 15
   epochs with early stopping), its GAN strategies fed by the generator that search
   registered (`--gan-search`, its images resized to 32 px), each final model tested once.
   32 px because 64 px has 4x the pixels per image: the 32 px study took 32 min on 2 cores
   (the report's "Time" line), 64 px would take hours;
3. a Markdown report (`--out`, default benchmarks/out/augmentation_answer/report.md): the
   data, the generator, the table with CIs, the paired differences and the verdicts.

Everything is also in MLflow: `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`.
`--gan-search NAME` skips step 1 and uses the generator search NAME registered in the same
store (`--out`), e.g. to re-run the study alone.
`--quick` runs the same steps at the smoke budget (32 px, 2 GAN trials of 2 epochs of 20
batches ranked on the G loss with the visual checks only, no Inception network, the diversity
limit off so that a barely trained generator can be registered, 2 classifier epochs, 2 seeds):
it shows that the pipeline runs, not whether the GAN helps.
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from orchestrator.cli.search import config_from_args
from orchestrator.config import ConfigError
from orchestrator.pipeline import run_search
from orchestrator.study import config as study_config
from orchestrator.study import driver as study_driver
from trainables.classifier.study import paired_markdown, rare_class_source

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid19-radiography-subset"
MINORITY = "COVID-19=0.2"
GAN_SCORES = ("fid", "cas_acc", "diversity_ratio")  # the generator's scores in the report

# Per budget: the GAN search's and the study's own command-line options.
BUDGETS = {
    "full": {
        "gan": ["--smoke", "--num-samples", "2", "--max-concurrent", "2", "--max-epochs", "20",
                "--scheduler", "none", "--set", "resolution=64", "--set", "width=0.5",
                "--set", "steps_per_epoch=40"],
        "study": ["--max-epochs", "15", "--set", "resolution=32", "--set", "channels=1",
                  "--set", "seeds=0,1,2,3,4", "--set", "n_boot=1000"],
    },
    "quick": {
        "gan": ["--smoke", "--num-samples", "2", "--max-concurrent", "2", "--max-epochs", "2",
                "--scheduler", "none", "--eval-metrics", "visual", "--objective", "g_loss",
                "--min-diversity", "0"],
        "study": ["--smoke", "--max-epochs", "2", "--set", "seeds=0,1", "--set", "n_boot=200"],
    },
}


def run(budget: str, data: Path, out: Path, gan_search: str = "") -> dict:
    """The GAN search (or the finished one named `gan_search`), then the study; returns what
    the report needs."""
    common = ["--mlflow-uri", f"sqlite:///{out.resolve()}/mlflow.db",
              "--storage", str(out.resolve() / "ray_results")]
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    gan_name, study_name = f"answer-gan-{budget}-{stamp}", f"answer-study-{budget}-{stamp}"
    # The folder the study's --minority makes (same source, same rule, same place).
    rare, counts = rare_class_source(data, study_config.parse_minority(MINORITY))
    t0 = time.perf_counter()
    if gan_search:
        gan_name, gan = gan_search, finished_search(gan_search, common[1])
    else:
        gan = run_search(config_from_args(["acgan", "--data", str(rare), "--name", gan_name,
                                           *BUDGETS[budget]["gan"], *common]))
    t1 = time.perf_counter()
    try:
        study = study_driver.run(study_config.config_from_args(
            ["--data", str(data), "--minority", MINORITY, "--gan-search", gan_name, "--name",
             study_name, *BUDGETS[budget]["study"], *common]))
    except ConfigError as exc:  # e.g. the GAN search registered no generator
        raise SystemExit(f"error: {exc}") from exc
    t2 = time.perf_counter()
    return {"budget": budget, "data": data, "rare": rare, "counts": counts, "gan": gan,
            "study": study, "minutes": ((t1 - t0) / 60, (t2 - t1) / 60), "common": common,
            "reused": bool(gan_search)}


def finished_search(name: str, tracking_uri: str) -> dict:
    """A finished GAN search's selected-epoch scores (its parent run's `best_*` metrics), in
    the shape `run_search` returns them."""
    from orchestrator.store.reader import load_search

    metrics = load_search(name, tracking_uri).parent.data.metrics
    return {"best": {"metrics": {k: metrics[f"best_{k}"] for k in GAN_SCORES
                                 if f"best_{k}" in metrics}}}


def report(result: dict) -> str:
    """The report as Markdown."""
    study, gan = result["study"], result["gan"]
    generator = study["generator"]
    best = (gan.get("best") or {}).get("metrics", {})
    scores = ", ".join(f"{k} {best[k]:.3f}" for k in GAN_SCORES if k in best)
    kept = "; ".join(f"{c}: {k} of {n} training images kept" for c, (k, n) in
                     result["counts"].items())
    gan_min, study_min = result["minutes"]
    lines = [
        f"# Does the GAN help? ({result['budget']} budget)", "",
        f"Data: `{result['data'].name}` with `--minority {MINORITY}` ({kept}; validation and "
        f"test untouched). Derived training data: `{result['rare']}`.", "",
        f"Generator: `{generator.uri}` from search `{generator.search}`, epoch "
        f"{generator.epoch}{f' ({scores})' if scores else ''}; trained on the same reduced "
        f"training data (fingerprint {(generator.data_fingerprint or '?')[:12]}).", "",
        f"Time: GAN search {'reused (--gan-search)' if result['reused'] else f'{gan_min:.1f} min'}"
        f", study {study_min:.1f} min.", "",
        study["markdown"], paired_markdown(study["paired"]),
        f"MLflow: `mlflow ui --backend-store-uri {result['common'][1]}` -> experiment "
        f"`{study['search']}`.",
    ]
    if result["budget"] == "quick":
        lines += ["", "Quick budget: tiny models and few seeds; this shows the pipeline runs, "
                  "it does not answer the question."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the smoke budget (a few minutes)")
    p.add_argument("--data", type=Path, default=DATA, help="a 2-class folder with COVID-19")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/augmentation_answer"))
    p.add_argument("--gan-search", default="", metavar="NAME",
                   help="use the generator this finished search registered in the same store "
                        "(--out) instead of running step 1")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run("quick" if args.quick else "full", args.data, args.out, args.gan_search)
    text = report(result)
    path = args.out / f"report{'-quick' if args.quick else ''}.md"
    path.write_text(text)
    print(f"\n{text}\nreport: {path}")


if __name__ == "__main__":
    main()
