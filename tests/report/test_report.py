"""The report: drawn from the run folder's files alone, every stage missing or present, and
opened in a real browser (headless Chromium) with no network."""

import shutil

import pytest
from matplotlib.figure import Figure

from lmsuite import report
from lmsuite.evaluate.runner import evaluate
from lmsuite.results import frames


@pytest.fixture(scope="module")
def partial_run(small_run, tmp_path_factory):
    """A run with training and some evaluations only: no memorization, frequency or
    intervention."""
    _, run_dir = small_run
    copy = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(run_dir, copy)
    evaluate(copy, tasks=["lambada", "perplexity", "pronouns", "stereotypes"], steps="log",
             progress=False)
    return copy


def test_frames_hold_the_runs_files(partial_run):
    f = frames(partial_run)
    assert set(f.rows["task"]) == {"lambada", "perplexity", "pronouns", "stereotypes"}
    assert set(f.metrics["step"]) == set(range(20))
    assert list(f.suite["folder"]) == ["s1"] and int(f.suite["parameters"].iloc[0]) > 0
    assert f.memorization.empty and f.frequency.empty and f.poisson == {}
    assert "item_occupation" in f.items.columns


def test_every_figure_is_a_function_of_the_frames_and_draws_what_there_is(partial_run):
    f = frames(partial_run)
    for name, draw in report.FIGURES.items():
        assert isinstance(draw(f), Figure), name
    lines = report.lambada_by_step(f).axes[0].get_lines()
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [0, 1, 2, 4, 8, 16, 20]
    missing = report.memorization_by_step(f).axes[0].texts
    assert missing and "lmsuite memorization" in missing[0].get_text()


def test_a_run_without_some_stages_gets_a_report_that_says_what_is_missing(partial_run):
    index = report.write_report(partial_run)
    page = index.read_text()
    assert "Not measured yet: <code>lmsuite memorization RUN_DIR</code>" in page
    assert "not measured" in page and "<table>" in page
    names = [part.split("'")[0] for part in page.split("<img src='")[1:]]
    assert len(names) == len(report.FIGURES)
    assert all((index.parent / name).stat().st_size > 1000 for name in names)
    assert "http://" not in page and "https://" not in page


def test_the_report_opens_in_a_real_browser_offline(partial_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian's chromium package; .ci/run installs "
                    "it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright (the dev extra) is not installed")
    index = report.write_report(partial_run)
    errors, requested = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                requested.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? "
                                                  "e.naturalWidth : 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(widths) == len(report.FIGURES) and all(w > 0 for w in widths)
    assert errors == [] and requested == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_compare_draws_published_beside_measured_and_says_which_is_which(partial_run, tmp_path):
    import json

    from lmsuite.report.published import COMPARISONS, lambada_published
    from tests.conftest import pythia_artifact

    evals = pythia_artifact("evals")
    copy = tmp_path / "run"
    shutil.copytree(partial_run, copy)
    f = frames(copy, evals)
    assert set(f.rows["suite"]) != {"pythia"} and set(f.published["suite"]) == {"pythia"}
    figure = lambada_published(f)
    published, measured = figure.axes[0], figure.axes[1]
    # 16 published curves (8 sizes, standard and deduped) on a fraction-of-training axis.
    assert len(published.get_lines()) == 16
    assert max(max(line.get_xdata()) for line in published.get_lines()) == pytest.approx(1.0)
    assert len(measured.get_lines()) == 1
    assert list(measured.get_lines()[0].get_xdata()) == pytest.approx(
        [s / 20 for s in (0, 1, 2, 4, 8, 16, 20)])
    page = report.write_report(copy, compare=evals).read_text()
    for name in COMPARISONS:
        assert f"<img src='{name}.png'" in page
    # The caption's published number is the file's own.
    data = json.loads((evals / "pythia-v1" / "pythia-70m" / "zero-shot" /
                       "70m_step143000.json").read_text())
    value = data["results"]["lambada_openai"]["acc"]
    assert f"Published at step 143,000 (standard): pythia-70m {value:.3f}" in page
    assert "Measured here" in page and "except those a caption calls published" in page
