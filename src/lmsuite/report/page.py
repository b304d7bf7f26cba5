"""The report's page: findings, figures with captions that say what to look for and the
numbers that answer it, and the suite's table; drawn from the run folder's files alone, and
readable from the file system with no network."""

from __future__ import annotations

import html
import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

from lmsuite.durable import fsync_tree, replace_folder, temporary, write_file
from lmsuite.report.figures import FIGURES, sizes
from lmsuite.report.findings import Finding, findings
from lmsuite.results import Frames, frames
from lmsuite.runs import Run

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.found { color: #1a7f37; font-weight: 600; } .not-found { color: #b42318; font-weight: 600; }
.not-measured { color: #888; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 14px; color: #333; } .missing { color: #888; font-style: italic; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _final(f: Frames, task: str, metric: str, dataset: str = "standard",
           digits: int = 3) -> str:
    """"tiny-1 0.03, ..., tiny-8 0.34": a metric at each size's last checkpoint."""
    rows = f.rows
    if rows.empty:
        return ""
    parts = []
    for name in sizes(f):
        part = rows[(rows["model"] == name) & (rows["dataset"] == dataset) &
                    (rows["task"] == task) & (rows["metric"] == metric)]
        if not part.empty:
            value = float(part.sort_values("step")["value"].iloc[-1])
            if not math.isnan(value):
                parts.append(f"{name} {value:.{digits}f}")
    return ", ".join(parts)


def captions(f: Frames) -> dict[str, tuple[str, str]]:
    """Per figure: (what it shows and what to look for, the measured numbers that answer)."""
    def numbers(text: str, *values: str) -> str:
        return text.format(*values) if all(values) else ""

    return {
        "loss": ("Training loss of every model against the tokens it had seen. Look for the "
                 "larger models' lower curves, and for deduplicated twins (dashed) close to "
                 "their standard ones.", numbers("Final validation loss (nats/token, standard): "
                                                 "{}.", _final(f, "perplexity", "loss"))),
        "lambada": ("LAMBADA-style accuracy: the last word of a story, a name, object or "
                    "occupation met only at its start. Look for the sudden rise once a model "
                    "learns to copy from far back, earlier and higher for larger models.",
                    numbers("At the last checkpoint (standard): {}.",
                            _final(f, "lambada", "acc"))),
        "lambada_ppl": ("The perplexity of that last word, which falls before the accuracy "
                        "rises.", numbers("At the last checkpoint (standard): {}.",
                                          _final(f, "lambada", "ppl", digits=1))),
        "validation_loss": ("Loss on held-out documents against step.",
                            numbers("At the last checkpoint (deduped): {}.",
                                    _final(f, "perplexity", "loss", "deduped"))),
        "scaling": ("LAMBADA-style accuracy at the end of training against parameters, "
                    "standard (filled) and deduplicated (open).", ""),
        "bias": ("The corpus skews some occupations' pronouns. Left: P(he) after a "
                 "male-stereotyped (▲) and a female-stereotyped (▼) occupation; look for the "
                 "two to part as training goes on. Right: the share of sentence pairs whose "
                 "stereotyped version is likelier (0.5 = no bias).",
                 numbers("At the end (standard): P(he) male-stereotyped {}; "
                         "female-stereotyped {}.",
                         _final(f, "pronouns", "p_he_male_stereotyped"),
                         _final(f, "pronouns", "p_he_female_stereotyped"))),
        "memorization": ("The share of the training samples seen so far that a checkpoint "
                         "reproduces exactly (32 tokens from 32, greedy), and held-out windows "
                         "(dotted, the control). Look for larger models memorizing more, "
                         "deduplicated ones (dashed) far less.",
                         numbers("Memorized samples at the end: standard {}; deduped {}.",
                                 _final(f, "memorization", "count", digits=0),
                                 _final(f, "memorization", "count", "deduped", digits=0))),
        "duplicates": ("Memorization at the last checkpoint by how often the sample's window "
                       "occurs in the training data. Look for the steep rise with "
                       "duplication.", numbers("Windows occurring 10-99 times: {}.",
                                               _final(f, "memorization", "rate_dups_10_99"))),
        "poisson": ("Memorized samples per window of training order against a Poisson "
                    "distribution with the same mean: points on the diagonal mean memorized "
                    "samples arrive at random along training, with no position effect.", ""),
        "predictability": ("How well each smaller model, and each earlier checkpoint of the "
                           "largest, predict which samples the largest model memorizes by the "
                           "end: precision (of those they memorize, how many it does) and "
                           "recall.", ""),
        "frequency_delta": ("Pythia's Δ: mean accuracy on the 10% most frequent terms minus "
                            "the 10% least frequent, counted in the tokens trained on so far. "
                            "Above zero: frequency helps.",
                            numbers("At the end (standard): facts {}; arithmetic {}.",
                                    _final(f, "frequency", "delta_facts", digits=2),
                                    _final(f, "frequency", "delta_arithmetic_0shot",
                                           digits=2))),
        "frequency_curves": ("Accuracy of the largest model against how often the term "
                             "occurred in its training tokens, in tenths of the terms.", ""),
        "intervention_bias": ("Pronouns swapped (he → she, ...) in every training document "
                              "from a late step on, in the deduplicated models (solid) against "
                              "the originals (dotted), with standard errors. Look for P(he) "
                              "falling, pct_stereotype moving to 0.5 and the gap closing.", ""),
        "intervention_cost": ("What the swap costs language modelling at the end: validation "
                              "loss and LAMBADA-style perplexity, original against "
                              "intervened.", ""),
    }


MISSING = {
    "loss": "lmsuite suite CONFIG", "memorization": "lmsuite memorization RUN_DIR",
    "frequency_delta": "lmsuite frequency RUN_DIR", "intervention_bias":
    "lmsuite intervene RUN_DIR --model SIZE --from-fraction 0.07",
}


def _findings_table(found: list[Finding]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(x.effect)}</td><td>{html.escape(x.expected)}</td>"
        f"<td>{html.escape(x.measured)}</td><td>{html.escape(x.test)}</td>"
        f"<td class='{x.verdict.replace(' ', '-')}'>{x.verdict}</td></tr>" for x in found)
    return ("<table><tr><th>effect planted in the built-in corpus</th><th>expected</th>"
            f"<th>measured</th><th>test</th><th></th></tr>{rows}</table>")


def _suite_table(f: Frames) -> str:
    if f.suite.empty:
        return "<p class='missing'>No trained models yet: <code>lmsuite suite CONFIG</code>.</p>"
    columns = ["folder", "layers", "d_model", "heads", "parameters",
               "non_embedding_parameters", "checkpoints", "tokens", "wall_s",
               "train_bin_sha256", "branch_of", "reused_from"]
    table = f.suite.sort_values(["parameters", "folder"])

    def cell(value) -> str:
        if value is None or value != value:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}"
        if isinstance(value, int) or hasattr(value, "dtype"):
            return f"{value:,}" if isinstance(value, int) else html.escape(str(value))
        text = str(value)
        return html.escape(text[:12] + "…" if len(text) > 20 else text)

    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row[c])}</td>" for c in columns) + "</tr>"
                   for _, row in table.iterrows())
    return f"<table><tr>{head}</tr>{body}</table>"


def _timings(run_dir: Path) -> list[dict]:
    path = Run(run_dir).timings
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def _timings_table(runs: list[dict]) -> str:
    if not runs:
        return "<p class='missing'>No timings: they are kept by <code>lmsuite run</code>.</p>"
    stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    head = "".join(f"<th>{html.escape(s)} (s)</th>" for s in stages)
    body = "".join(
        f"<tr><td>{html.escape(r['started'])}</td><td>{r.get('matmul_fp32_gflops')}</td>" +
        "".join(f"<td>{r['stages'].get(s, '')}</td>" for s in stages) +
        f"<td>{r['total_s']}</td></tr>" for r in runs)
    return (f"<table><tr><th>run started</th><th>1024³ fp32 GFLOP/s</th>{head}"
            f"<th>total (s)</th></tr>{body}</table><p>Each invocation of <code>lmsuite run</code> "
            "is a row (a resumed run's row holds what it did); the rate is that of PyTorch's "
            "default path, measured in the same run.</p>")


def markdown(f: Frames) -> str:
    """The findings and the timings as Markdown (RESULTS.md)."""
    lines = [f"# Findings on `{f.run_dir.name}`", "",
             "Written by `lmsuite report RUN_DIR --markdown FILE` from the run's result rows; "
             "every number was measured on that run.", "",
             "| effect | expected | measured | test | |", "|---|---|---|---|---|"]
    lines += [f"| {x.effect} | {x.expected} | {x.measured} | {x.test} | **{x.verdict}** |"
              for x in findings(f)]
    runs = _timings(f.run_dir)
    if runs:
        stages = list(dict.fromkeys(s for r in runs for s in r["stages"]))
        lines += ["", "## Time per stage", "",
                  "| run started | 1024³ fp32 GFLOP/s (PyTorch's default path) | " +
                  " | ".join(f"{s} (s)" for s in stages) + " | total (s) |",
                  "|---|---|" + "---|" * len(stages) + "---|"]
        lines += [f"| {r['started']} | {r.get('matmul_fp32_gflops')} | " +
                  " | ".join(str(r["stages"].get(s, "")) for s in stages) +
                  f" | {r['total_s']} |" for r in runs]
    return "\n".join(lines) + "\n"


def render(f: Frames, folder: Path) -> Path:
    """Draw every figure into `folder` and write index.html there."""
    from lmsuite.report.published import COMPARISONS, comparison_captions

    texts = captions(f)
    drawn = dict(FIGURES)
    if f.published is not None and not f.published.empty:
        drawn.update(COMPARISONS)
        texts.update(comparison_captions(f, _final))
    parts = []
    for name, draw in drawn.items():
        figure = draw(f)
        figure.savefig(folder / f"{name}.png", dpi=100)
        shows, measured = texts.get(name, ("", ""))
        empty = any(t.get_text().startswith("not measured yet") for ax in figure.axes
                    for t in ax.texts)
        note = (f"<p class='missing'>Not measured yet: <code>{MISSING.get(name, '')}</code> "
                "makes it.</p>") if empty and name in MISSING else ""
        parts.append(f"<figure><img src='{name}.png' alt='{html.escape(name)}'>"
                     f"<figcaption>{html.escape(shows)} <b>{html.escape(measured)}</b>"
                     f"</figcaption>{note}</figure>")
    title = f"lmsuite report: {html.escape(f.run_dir.name)}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}"
            f"</title><style>{CSS}</style></head><body><h1>{title}</h1>"
            f"<p>Drawn from the files in <code>{html.escape(str(f.run_dir))}</code> on {stamp}; "
            "every number below was measured on this run" +
            (", except those a caption calls published (Pythia's own result files)"
             if f.published is not None and not f.published.empty else "") + ".</p>"
            "<h2>Findings</h2>" + _findings_table(findings(f)) +
            "<h2>Figures</h2>" + "".join(parts) +
            "<h2>The suite</h2>" + _suite_table(f) +
            "<h2>How long it took</h2>" + _timings_table(_timings(f.run_dir)) +
            "</body></html>")
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def write_report(run_dir: str | Path, markdown_file: str | Path | None = None,
                 compare: str | Path | None = None) -> Path:
    """RUN_DIR/report/index.html and its figures, replaced whole (and the findings as Markdown
    in `markdown_file`), with Pythia's published results beside the run's where the run's
    results hold them or `compare` (a Pythia evals/ folder) is given; returns index.html."""
    run = Run(run_dir)
    final = run.report
    tmp = temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        f = frames(run_dir, compare)
        render(f, tmp)
        if markdown_file is not None:
            write_file(markdown_file, markdown(f))
        fsync_tree(tmp)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "index.html"
