"""Published and measured side by side: Pythia's published evaluations (rows of suite "pythia",
imported with `lmsuite import lm-eval` or read by `lmsuite report --compare EVALS_DIR`) beside
the run's own, with steps drawn as a fraction of training so that a suite of a few hundred
steps and Pythia's 143,000 share an x-axis.
"""

from __future__ import annotations

import re

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmsuite import runs
from lmsuite.report.figures import _branches, _empty, _rows, _style, colours, sizes
from lmsuite.results import Frames

PYTHIA_STEPS = 143_000
"""The steps every Pythia model trained for (its last checkpoint)."""
FRACTION_AXIS = "fraction of training (log; 0 at the left)"
LINTHRESH = 1e-4


def _size(model: str) -> float:
    """pythia-410m -> 0.41 (billions), for ordering; models of other names last."""
    found = re.match(r"pythia-([\d.]+)([mb])$", model)
    if found is None:
        return float("inf")
    return float(found[1]) * (1e-3 if found[2] == "m" else 1.0)


def published_sizes(f: Frames) -> list[str]:
    """The published Pythia models (not the intervention ones), smallest first."""
    if f.published is None or f.published.empty:
        return []
    names = {m for m in f.published["model"] if "intervention" not in m}
    return sorted(names, key=_size)


def _published(f: Frames, task: str, metric: str):
    p = f.published
    if p is None or p.empty:
        return p if p is not None else f.rows.iloc[0:0]
    return p[(p["task"] == task) & (p["metric"] == metric)]


def _last_steps(f: Frames) -> dict[tuple[str, str], int]:
    """Each of the run's (model, dataset): the step its training ended at."""
    if f.suite.empty:
        return {}
    return {(r["model"], r["dataset"]): int(r["steps"]) for _, r in f.suite.iterrows()}


def _axes(title: str, ylabel: str, panels: list[str], rows: int = 1,
          start: float | None = None) -> tuple[Figure, list]:
    """Panels sharing a fraction-of-training x-axis: log from 0, or linear from `start`."""
    fig = Figure(figsize=(5.2 * len(panels), 3.8 * rows), layout="constrained")
    grid = fig.subplots(rows, len(panels), squeeze=False, sharex=True, sharey="row")
    axes = [ax for line in grid for ax in line]
    for i, ax in enumerate(axes):
        if start is None:
            ax.set_xscale("symlog", linthresh=LINTHRESH)
            ax.set_xlim(0, 1.05)
        else:
            ax.set_xlim(start, 1.01)
        ax.grid(alpha=0.3)
        ax.set_title(panels[i % len(panels)] if rows == 1 or i < len(panels) else "",
                     fontsize=9)
        if i >= len(axes) - len(panels):
            ax.set_xlabel(FRACTION_AXIS if start is None else "fraction of training")
        if i % len(panels) == 0:
            ax.set_ylabel(ylabel)
    fig.suptitle(title)
    return fig, axes


def _size_legend(ax, names: list[str], colour: dict) -> None:
    handles = [Line2D([], [], color=colour[n], label=n) for n in names]
    handles += [Line2D([], [], color="black", ls="-", label="standard"),
                Line2D([], [], color="black", ls="--", label="deduped")]
    ax.legend(handles=handles, fontsize=6, ncol=2, loc="best")


def lambada_published(f: Frames) -> Figure:
    """LAMBADA accuracy against the fraction of training: Pythia's published curves (every
    size, standard solid and deduped dashed) beside the run's own on the same axes."""
    fig, (left, right) = _axes("LAMBADA accuracy: published Pythia beside this run",
                               "accuracy", ["published: Pythia, lambada_openai",
                                            "measured here: LAMBADA-style"])
    published = _published(f, "harness:lambada_openai", "acc")
    names = published_sizes(f)
    if published is None or published.empty or not names:
        _empty(fig, left, "lmsuite report RUN_DIR --compare PYTHIA_EVALS_DIR")
    else:
        cmap = colormaps["plasma"]
        colour = {n: cmap(0.85 * i / max(len(names) - 1, 1)) for i, n in enumerate(names)}
        for (model, dataset), group in published.groupby(["model", "dataset"]):
            if model not in colour:
                continue
            group = group.sort_values("step")
            left.plot(group["step"] / PYTHIA_STEPS, group["value"], _style(dataset),
                      color=colour[model], marker=".", ms=2, lw=1)
        _size_legend(left, names, colour)
    ours = _rows(f, "lambada", "acc")
    last = _last_steps(f)
    own = sizes(f)
    if ours.empty or not own:
        return _empty(fig, right, "lmsuite eval --tasks lambada")
    for (model, dataset), group in ours[ours["model"].isin(own)].groupby(["model", "dataset"]):
        group = group.sort_values("step")
        right.plot(group["step"] / last.get((model, dataset), group["step"].max()),
                   group["value"], _style(dataset), color=colours(f)[model], marker=".",
                   ms=3, lw=1)
    _size_legend(right, own, colours(f))
    return fig


def intervention_published(f: Frames) -> Figure:
    """CrowS-Pairs (gender) and LAMBADA of Pythia's intervened models and their originals,
    published, above the same measures of the run's intervention."""
    panels = ["CrowS-Pairs gender: pct_stereotype", "LAMBADA accuracy"]
    fig, axes = _axes("The pronoun intervention: published (top) and measured here (bottom)",
                      "value", panels, rows=2, start=0.75)
    cmap = colormaps["tab10"]
    published = f.published
    intervened = sorted({m for m in published["model"] if "intervention" in m}, key=_size) \
        if published is not None and not published.empty else []
    if not intervened:
        _empty(fig, axes[0], "lmsuite report RUN_DIR --compare PYTHIA_EVALS_DIR")
    measures = (("harness:crows_pairs_english_gender", "pct_stereotype"),
                ("harness:lambada_openai", "acc"))
    for i, model in enumerate(intervened):
        original = model.split("-intervention")[0]
        mine = published[published["model"] == model]
        start = int(mine["step"].min())
        for ax, (task, metric) in zip(axes[:2], measures, strict=True):
            for name, style in ((original, ":"), (model, "-")):
                part = _published(f, task, metric)
                part = part[(part["model"] == name) & (part["dataset"] == "deduped") &
                            (part["step"] >= start)].sort_values("step")
                if not part.empty:
                    ax.errorbar(part["step"] / PYTHIA_STEPS, part["value"],
                                yerr=part.get("stderr"), fmt=style, color=cmap(i), marker=".",
                                ms=3, capsize=2, lw=1, label=name if style == "-" else None)
        axes[0].legend(fontsize=6)
    branches = _branches(f)
    if branches.empty:
        return _empty(fig, axes[2], "lmsuite intervene")
    last = _last_steps(f)
    for i, (_, branch) in enumerate(branches.iterrows()):
        original = runs.split_model_folder(branch["branch_of"])[0]
        total = last.get((original, branch["dataset"]), int(branch["steps"]))
        for ax, (task, metric) in zip(axes[2:], (("stereotypes", "pct_stereotype"),
                                                  ("lambada", "acc")), strict=True):
            rows = _rows(f, task, metric)
            for name, style, dataset in ((original, ":", branch["dataset"]),
                                         (branch["model"], "-", None)):
                part = rows[(rows["model"] == name) & (rows["step"] >= branch["fork_step"])]
                if dataset is not None:
                    part = part[part["dataset"] == dataset]
                part = part.sort_values("step")
                if not part.empty:
                    ax.errorbar(part["step"] / total, part["value"], yerr=part.get("stderr"),
                                fmt=style, color=cmap(i), marker=".", ms=3, capsize=2, lw=1,
                                label=branch["model"] if style == "-" else None)
    axes[2].legend(fontsize=6, title="dotted: original", title_fontsize=6)
    for ax in (axes[0], axes[2]):
        ax.axhline(0.5, color="gray", lw=0.8)
    axes[2].set_ylabel("value (measured here)")
    return fig


def frequency_published(f: Frames) -> Figure:
    """Arithmetic accuracy against the fraction of training: Pythia's published term-frequency
    study (mean over first operands, deduped models, by shot count) beside the run's own
    arithmetic accuracy of its deduped models."""
    fig, (left, right) = _axes("Arithmetic accuracy: published Pythia beside this run",
                               "accuracy", ["published: Pythia term-frequency study (deduped)",
                                            "measured here: arithmetic (deduped)"], start=0.0)
    published = f.published
    terms = published[published["task"].str.startswith("term_frequency:")] \
        if published is not None and not published.empty else None
    shots_style = {}
    if terms is None or terms.empty:
        _empty(fig, left, "lmsuite report RUN_DIR --compare PYTHIA_EVALS_DIR")
    else:
        names = sorted(set(terms["model"]), key=_size)
        cmap = colormaps["plasma"]
        colour = {n: cmap(0.85 * i / max(len(names) - 1, 1)) for i, n in enumerate(names)}
        shots = sorted({int(t.split(":")[1].removesuffix("shot")) for t in terms["task"]})
        shown = [shots[0], shots[-1]]
        shots_style = {shown[0]: "-", shown[-1]: "--"}
        for (model, task), group in terms.groupby(["model", "task"]):
            k = int(task.split(":")[1].removesuffix("shot"))
            if k not in shots_style:
                continue
            mean = group.groupby("step")["value"].mean()
            left.plot(mean.index / PYTHIA_STEPS, mean.values, shots_style[k],
                      color=colour[model], marker=".", lw=1)
        left.legend(handles=[Line2D([], [], color=colour[n], label=n) for n in names] +
                    [Line2D([], [], color="black", ls=s, label=f"{k}-shot")
                     for k, s in shots_style.items()], fontsize=6, ncol=2)
    rows = f.rows[(f.rows["task"] == "arithmetic") & (f.rows["dataset"] == "deduped")] \
        if not f.rows.empty else f.rows
    own = sizes(f)
    if rows.empty or not own:
        return _empty(fig, right, "lmsuite eval --tasks arithmetic")
    rows = rows[rows["model"].isin(own)]
    measured = sorted({int(m.removeprefix("acc_").removesuffix("shot")) for m in rows["metric"]
                       if re.fullmatch(r"acc_\d+shot", m)})
    styles = {measured[0]: "-", measured[-1]: "--"} if measured else {}
    last = _last_steps(f)
    for (model, metric), group in rows.groupby(["model", "metric"]):
        found = re.fullmatch(r"acc_(\d+)shot", metric)
        if found is None or int(found[1]) not in styles:
            continue
        group = group.sort_values("step")
        right.plot(group["step"] / last.get((model, "deduped"), group["step"].max()),
                   group["value"], styles[int(found[1])], color=colours(f)[model], marker=".",
                   lw=1)
    right.legend(handles=[Line2D([], [], color=colours(f)[n], label=n) for n in own] +
                 [Line2D([], [], color="black", ls=s, label=f"{k}-shot")
                  for k, s in styles.items()], fontsize=6, ncol=2)
    return fig


COMPARISONS = {"published_lambada": lambada_published,
               "published_intervention": intervention_published,
               "published_frequency": frequency_published}
"""The comparison figures, drawn when the report has published rows."""


def _at_end(published, task: str, metric: str, models: list[str], dataset: str) -> str:
    parts = []
    for model in models:
        part = published[(published["task"] == task) & (published["metric"] == metric) &
                         (published["model"] == model) & (published["dataset"] == dataset)]
        if not part.empty:
            parts.append(f"{model} {float(part.sort_values('step')['value'].iloc[-1]):.3f}")
    return ", ".join(parts)


def comparison_captions(f: Frames, final) -> dict[str, tuple[str, str]]:
    """Per comparison figure: what it shows, and the numbers, each said to be published or
    measured here. `final(f, task, metric, dataset)` gives the run's own numbers."""
    published = f.published
    names = published_sizes(f)
    pub_lambada = _at_end(published, "harness:lambada_openai", "acc", names, "standard") \
        if names else ""
    intervened = sorted({m for m in published["model"] if "intervention" in m}, key=_size) \
        if published is not None and not published.empty else []
    pub_crows = _at_end(published, "harness:crows_pairs_english_gender", "pct_stereotype",
                        intervened + [m.split("-intervention")[0] for m in intervened],
                        "deduped") if intervened else ""
    own_lambada = final(f, "lambada", "acc")
    return {
        "published_lambada": (
            "Left, published (Pythia's lm-evaluation-harness files): lambada_openai accuracy "
            "of every Pythia size, standard solid and deduplicated dashed, against the "
            "fraction of its 143,000 steps. Right, measured here: this run's LAMBADA-style "
            "accuracy against the fraction of its own steps. Look for the same shape: flat "
            "near zero early, a rise ordered by size, deduplication changing little.",
            (f"Published at step 143,000 (standard): {pub_lambada}. " if pub_lambada else "") +
            (f"Measured here at the last step (standard): {own_lambada}." if own_lambada
             else "")),
        "published_intervention": (
            "Top, published: CrowS-Pairs (English, gender) pct_stereotype and lambada_openai "
            "accuracy of Pythia's intervened deduplicated models (solid) and their originals "
            "(dotted) from the fork on. Bottom, measured here: the CrowS-Pairs-style "
            "pct_stereotype and LAMBADA-style accuracy of this run's intervened models and "
            "their originals. Bars: standard errors.",
            f"Published at the last step (deduped): {pub_crows}." if pub_crows else ""),
        "published_frequency": (
            "Left, published: Pythia's term-frequency study, accuracy on multiplication "
            "averaged over first operands, deduplicated models, at the fewest and the most "
            "shots, against the fraction of training. The published files hold accuracies "
            "only, no term counts, so the frequency effect itself (Δ) is measured here only "
            "(the term-frequency figure above). Right, measured here: this run's arithmetic "
            "accuracy of its deduplicated models.", ""),
    }
