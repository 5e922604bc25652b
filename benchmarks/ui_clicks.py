"""Clicks from a search's experiment page in the MLflow UI to what a researcher came for,
counted in a real browser (headless Chromium driven by Playwright), with a screenshot of every
page on the way.

    pip install -e ".[ui]"; apt-get install chromium        # Playwright drives the system browser
    python -m benchmarks.ui_clicks --smoke                  # a fresh smoke search, then the clicks
    python -m benchmarks.ui_clicks --mlflow-uri sqlite:///mlruns/mlflow.db [--search NAME]

Starts `mlflow ui` on the store (a free local port; stopped by pid at the end), opens the
search's experiment page as the search's summary prints it, and follows links by clicking:
the best (trial, epoch) within 2 clicks, that epoch's sample grid within 3, the registered
champion within 3.  Each target is checked on the page it reaches (the run id, the epoch, the
image, the alias), not assumed; the exit status is 1 when a target is missed.  Screenshots go
to --out (default benchmarks/out/ui_clicks/): look at them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.store.layout import grid_artifact, role_runs, ui_link

# What the README promises (2 clicks each from the experiment page, measured 2026-12-06).
LIMITS = {"best trial and epoch": 2, "sample grid of the best epoch": 2,
          "registered champion": 2}


@dataclass
class Target:
    name: str
    clicks: int
    reached: bool
    screenshot: str
    evidence: str


def find_browser(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("CXR_CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow ui` in its own session (so that stopping it stops its workers, and nothing else)."""
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"mlflow ui exited ({proc.returncode}); see {log}")
            time.sleep(1)
    stop(proc)
    raise SystemExit(f"mlflow ui did not answer on port {port} within 120 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def search_facts(uri: str, name: str | None) -> dict:
    """The search's experiment, parent run, best trial run and epoch, and champion version."""
    client = MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if name in (None, e.name)]
    parents = role_runs(client, "search", [e.experiment_id for e in experiments], 1)
    if not parents:
        raise SystemExit(f"no search {'named ' + repr(name) if name else ''} in {uri}")
    parent = parents[0]
    tags = parent.data.tags
    if not tags.get("cxr.best_run_id"):
        raise SystemExit(f"search {parent.info.run_name!r} selected no epoch "
                         f"({tags.get('cxr.best', 'see its description')}); nothing to click to")
    return {"experiment": parent.info.experiment_id, "parent": parent.info.run_id,
            "search": parent.info.run_name, "best_run": tags["cxr.best_run_id"],
            "best_epoch": int(tags["cxr.best_epoch"]),
            "best_run_name": client.get_run(tags["cxr.best_run_id"]).info.run_name}


def click_through(browser: str, base: str, facts: dict, out: Path) -> list[Target]:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit('Playwright is not installed: pip install -e ".[ui]" (it drives the '
                         "system's Chromium; no browser download)") from None
    start = base + "/" + ui_link(facts["experiment"])
    grid = grid_artifact(facts["best_epoch"])
    targets = []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})

        def shot(tab, name: str) -> str:
            tab.wait_for_timeout(2500)  # the UI renders after its API calls return
            path = out / f"{name}.png"
            tab.screenshot(path=str(path), full_page=True)
            return str(path)

        parent_link = page.locator(f'a[href*="/runs/{facts["parent"]}"]').first
        clicks = Clicks()

        def open_parent():
            """Click 1: from the experiment page to the search's run (its description)."""
            for extra in page.context.pages[1:]:
                extra.close()
            page.goto(start)
            clicks.count = 0  # every walk starts on the experiment page
            clicks.click(parent_link, timeout=60_000)  # waits until the runs table shows it
            page.get_by_text("Best epoch: trial").first.wait_for(timeout=30_000)
            return page

        page.goto(start)
        parent_link.wait_for(timeout=60_000)
        shot(page, "0_experiment_page")

        def best_trial():
            page_ = open_parent()
            shot(page_, "1_search_run")
            trial = follow(page_, page_.get_by_role("link", name=facts["best_run_name"]).first,
                           clicks)
            wait_for_url_part(trial, f"/runs/{facts['best_run']}")
            trial.get_by_text("cxr.best_epoch").first.wait_for(timeout=30_000)
            return trial, clicks.count, (f"{trial.url.split('#')[-1][:70]}: tag cxr.best_epoch "
                              f"{facts['best_epoch']}; the search run's description names the "
                              "epoch one click earlier")

        def best_grid():
            page_ = open_parent()
            view = follow(page_, page_.get_by_role(
                "link", name=f"sample grid of epoch {facts['best_epoch']}").first, clicks)
            view.get_by_text(grid).first.wait_for(timeout=30_000)
            view.wait_for_function(  # the preview: a decoded image, not a broken one
                "() => Array.from(document.images).some(i => i.complete && i.naturalWidth >= 64)",
                timeout=30_000)
            return view, clicks.count, f"{grid} shown as an image"

        def champion():
            page_ = open_parent()
            model = follow(page_, page_.locator('a[href*="/versions/"]').first, clicks)
            wait_for_url_part(model, "/versions/")
            model.get_by_text("champion").first.wait_for(timeout=30_000)
            # the epoch's numbers on the version page itself (its description), not a click on
            metrics = model.get_by_text("metrics: fid=").first  # the logged model further
            metrics.wait_for(timeout=30_000)
            shown = metrics.inner_text().split(",")[0].strip()
            return model, clicks.count, (f"{model.url.split('#')[-1][:70]}: alias champion and "
                                         f"the epoch's metrics ({shown}, ...) shown")

        for (name, screenshot), walk in zip(
                (("best trial and epoch", "2_best_trial_run"),
                 ("sample grid of the best epoch", "3_best_grid"),
                 ("registered champion", "4_champion")), (best_trial, best_grid, champion)):
            try:
                tab, count, evidence = walk()
                targets.append(Target(name, count, True, shot(tab, screenshot), evidence))
            except PlaywrightError as exc:  # not reached: say where it stopped, with a picture
                last = page.context.pages[-1]
                targets.append(Target(name, 0, False, shot(last, screenshot),
                                      f"stopped at {last.url.split('#')[-1][:70]}: "
                                      f"{str(exc).splitlines()[0][:120]}"))
        chromium.close()
    return targets


class Clicks:
    """Every click of a walk goes through here, so the count is what the browser did."""

    def __init__(self):
        self.count = 0

    def click(self, locator, **options) -> None:
        locator.click(**options)
        self.count += 1


def follow(page, link, clicks: Clicks):
    """Click `link`; the page it opens (the run description's links open a new tab)."""
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            clicks.click(link)
        return opened.value
    clicks.click(link)
    return page


def wait_for_url_part(page, part: str) -> None:
    """The UI navigates inside the page (hash routes), which fires no load event."""
    page.wait_for_function("part => location.href.includes(part)", arg=part, timeout=30_000)


def smoke_store(out: Path) -> str:
    """A fresh one-trial smoke search (its grey generator allowed, --min-diversity 0)."""
    from orchestrator.cli.search import config_from_args
    from orchestrator.pipeline import run_search

    uri = f"sqlite:///{out.resolve()}/mlflow.db"
    run_search(config_from_args(["acgan", "--smoke", "--num-samples", "2", "--max-epochs", "2",
                                 "--scheduler", "none", "--min-diversity", "0", "--name",
                                 f"ui-clicks-{time.strftime('%Y%m%d-%H%M%S')}", "--mlflow-uri",
                                 uri, "--storage", str(out.resolve() / "ray_results")]))
    return uri


def table(targets: list[Target]) -> str:
    lines = ["| target | clicks | limit | reached | screenshot | evidence |", "|---" * 6 + "|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.clicks} | {LIMITS[t.name]} | {'yes' if t.reached else 'NO'}"
                     f" | {Path(t.screenshot).name} | {t.evidence} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlflow-uri", help="the store of a finished search (sqlite:///...)")
    p.add_argument("--search", help="the search (experiment) name; default: the newest search")
    p.add_argument("--smoke", action="store_true", help="run a smoke search first, into --out")
    p.add_argument("--browser", help="Chromium's executable (default: chromium on PATH, or "
                                     "$CXR_CHROMIUM)")
    p.add_argument("--out", default="benchmarks/out/ui_clicks")
    args = p.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium (Debian), or pass --browser")
    if not args.smoke and not args.mlflow_uri:
        raise SystemExit("give --mlflow-uri of a finished search, or --smoke")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    uri = smoke_store(out) if args.smoke else args.mlflow_uri
    facts = search_facts(uri, args.search)
    port = free_port()
    ui = start_ui(uri, port, out / "mlflow_ui.log")
    try:
        targets = click_through(browser, f"http://127.0.0.1:{port}", facts, out)
    finally:
        stop(ui)
    text = (f"search {facts['search']}: best trial run {facts['best_run_name']}, epoch "
            f"{facts['best_epoch']}\n\n" + table(targets))
    print(text)
    (out / "clicks.md").write_text(text + "\n")
    missed = [t.name for t in targets if not t.reached or t.clicks > LIMITS[t.name]]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
