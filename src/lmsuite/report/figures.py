"""The report's figures, each a function of the run's frames (`lmsuite.results.frames`) that
returns a matplotlib Figure: the same call draws it in a notebook and in the report.

Pythia's conventions: steps on a log axis (0 included), one colour per size in size order,
the deduplicated model dashed beside its standard twin, axes with their units.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from lmsuite import runs
from lmsuite.results import Frames

WIDTH, HEIGHT = 7.0, 4.2


def sizes(f: Frames) -> list[str]:
    """The suite's sizes, smallest first (intervention branches left out)."""
    if f.suite.empty:
        return []
    trained = f.suite[f.suite["branch_of"].isna()]
    return list(trained.sort_values("parameters").drop_duplicates("model")["model"])


def colours(f: Frames) -> dict[str, tuple]:
    names = sizes(f)
    cmap = colormaps["viridis"]
    return {name: cmap(0.9 * i / max(len(names) - 1, 1)) for i, name in enumerate(names)}


def _style(dataset: str) -> str:
    return "--" if dataset == "deduped" else "-"


def _figure(title: str, xlabel: str, ylabel: str, log_steps: bool = False,
            panels: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(WIDTH * (1 if panels == 1 else 0.75 * panels), HEIGHT),
                 layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0].tolist()
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log_steps:
            ax.set_xscale("symlog", linthresh=1)
    fig.suptitle(title)
    return fig, axes


def _empty(fig: Figure, ax, what: str) -> Figure:
    ax.text(0.5, 0.5, f"not measured yet: {what}", ha="center", va="center",
            transform=ax.transAxes, color="gray")
    return fig


def _legend(ax, f: Frames) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=n) for n, c in colours(f).items()]
    handles += [Line2D([], [], color="black", ls="-", label="standard"),
                Line2D([], [], color="black", ls="--", label="deduped")]
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="best")


def _rows(f: Frames, task: str, metric: str):
    if f.rows.empty:
        return f.rows
    return f.rows[(f.rows["task"] == task) & (f.rows["metric"] == metric)]


def _trained(frame, f: Frames):
    """Rows of the suite's own models (not the intervention branches)."""
    names = set(sizes(f))
    return frame[frame["model"].isin(names)] if not frame.empty else frame


def metric_by_step(f: Frames, task: str, metric: str, ylabel: str,
                   title: str | None = None) -> Figure:
    """One metric against step, one line per size, standard solid and deduped dashed."""
    fig, (ax,) = _figure(title or f"{task} {metric} against training step", "step (log)",
                         ylabel, log_steps=True)
    rows = _trained(_rows(f, task, metric), f)
    if rows.empty:
        return _empty(fig, ax, f"lmsuite eval --tasks {task}")
    for (model, dataset), group in rows.groupby(["model", "dataset"]):
        group = group.sort_values("step")
        ax.plot(group["step"], group["value"], _style(dataset), color=colours(f).get(model),
                marker=".", ms=3)
    _legend(ax, f)
    return fig


def lambada_by_step(f: Frames) -> Figure:
    return metric_by_step(f, "lambada", "acc", "accuracy",
                          "LAMBADA-style accuracy against training step")


def lambada_perplexity_by_step(f: Frames) -> Figure:
    fig = metric_by_step(f, "lambada", "ppl", "perplexity of the last word",
                         "LAMBADA-style perplexity against training step")
    fig.axes[0].set_yscale("log")
    return fig


def validation_loss_by_step(f: Frames) -> Figure:
    return metric_by_step(f, "perplexity", "loss", "validation loss (nats/token)",
                          "Validation loss against training step")


def bias_by_step(f: Frames) -> Figure:
    """P(he) after male- and female-stereotyped occupations, and CrowS-Pairs-style
    pct_stereotype, against step."""
    fig, axes = _figure("Gender bias against training step", "step (log)", "P(he)",
                        log_steps=True, panels=2)
    male = _trained(_rows(f, "pronouns", "p_he_male_stereotyped"), f)
    female = _trained(_rows(f, "pronouns", "p_he_female_stereotyped"), f)
    stereo = _trained(_rows(f, "stereotypes", "pct_stereotype"), f)
    if male.empty:
        return _empty(fig, axes[0], "lmsuite eval --tasks pronouns,stereotypes")
    for rows, marker in ((male, "^"), (female, "v")):
        for (model, dataset), group in rows.groupby(["model", "dataset"]):
            group = group.sort_values("step")
            axes[0].plot(group["step"], group["value"], _style(dataset), marker=marker, ms=3,
                         color=colours(f).get(model))
    axes[0].set_title("P(he): male-stereotyped ▲, female-stereotyped ▼", fontsize=9)
    for (model, dataset), group in stereo.groupby(["model", "dataset"]):
        group = group.sort_values("step")
        axes[1].plot(group["step"], group["value"], _style(dataset), color=colours(f).get(model))
    axes[1].axhline(0.5, color="gray", lw=0.8)
    axes[1].set_ylabel("pct_stereotype (0.5 = none)")
    _legend(axes[1], f)
    return fig


def loss_by_tokens(f: Frames) -> Figure:
    """Training loss against tokens seen (a running mean over 20 steps)."""
    fig, (ax,) = _figure("Training loss against tokens", "tokens seen (log)",
                         "training loss (nats/token)")
    ax.set_xscale("log")
    metrics = _trained(f.metrics, f)
    if metrics.empty:
        return _empty(fig, ax, "lmsuite suite")
    for (model, dataset), group in metrics.groupby(["model", "dataset"]):
        group = group.sort_values("step")
        ax.plot(group["tokens"], group["loss"].rolling(20, min_periods=1).mean(),
                _style(dataset), color=colours(f).get(model), lw=1)
    _legend(ax, f)
    return fig


def scaling(f: Frames, task: str = "lambada", metric: str = "acc",
            ylabel: str = "LAMBADA-style accuracy") -> Figure:
    """A metric at each model's last checkpoint against its parameter count."""
    fig, (ax,) = _figure(f"{ylabel} at the end of training against model size",
                         "parameters (log)", ylabel)
    ax.set_xscale("log")
    rows = _trained(_rows(f, task, metric), f)
    if rows.empty or f.suite.empty:
        return _empty(fig, ax, f"lmsuite eval --tasks {task}")
    params = f.suite.drop_duplicates("model").set_index("model")["parameters"]
    for dataset, marker in (("standard", "o"), ("deduped", "s")):
        last = rows[rows["dataset"] == dataset].sort_values("step").groupby("model").last()
        if last.empty:
            continue
        x = params.reindex(last.index)
        order = np.argsort(x.values)
        ax.plot(x.values[order], last["value"].values[order], _style(dataset), marker=marker,
                color="black", label=dataset, mfc="white" if dataset == "deduped" else "black")
    ax.legend(fontsize=8)
    return fig


def memorization_by_step(f: Frames) -> Figure:
    """The share of the samples seen so far that each checkpoint memorized, and the held-out
    control (dotted)."""
    fig, (ax,) = _figure("Memorization against training step", "step (log)",
                         "memorized share of samples seen", log_steps=True)
    rows = _trained(_rows(f, "memorization", "rate"), f)
    held = _trained(_rows(f, "memorization", "heldout_rate"), f)
    if rows.empty:
        return _empty(fig, ax, "lmsuite memorization")
    for (model, dataset), group in rows.groupby(["model", "dataset"]):
        group = group.sort_values("step")
        ax.plot(group["step"], group["value"], _style(dataset), marker=".",
                color=colours(f).get(model))
    for (model, _), group in held[held["dataset"] == "standard"].groupby(
            ["model", "dataset"]):
        group = group.sort_values("step")
        ax.plot(group["step"], group["value"], ":", color=colours(f).get(model), lw=1)
    _legend(ax, f)
    return fig


def memorization_by_duplicates(f: Frames) -> Figure:
    """At the last checkpoint, the memorized share of samples by how often their window
    occurs in the training data."""
    fig, (ax,) = _figure("Memorization against duplication (last checkpoint)",
                         "occurrences of the sample's 64-token window in train.bin",
                         "memorized share")
    rows = _trained(f.rows, f)
    if rows.empty or "metric" not in rows:
        return _empty(fig, ax, "lmsuite memorization")
    rows = rows[(rows["task"] == "memorization") & rows["metric"].str.startswith("rate_dups")]
    if rows.empty:
        return _empty(fig, ax, "lmsuite memorization")
    labels = list(dict.fromkeys(rows["metric"]))
    for (model, dataset), group in rows.groupby(["model", "dataset"]):
        last = group[group["step"] == group["step"].max()].set_index("metric")
        values = [last["value"].get(m, np.nan) if last["n"].get(m, 0) else np.nan
                  for m in labels]
        ax.plot(range(len(labels)), values, _style(dataset), marker="o",
                color=colours(f).get(model))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([m.removeprefix("rate_dups_").replace("_plus", "+").replace("_", "–")
                        for m in labels])
    _legend(ax, f)
    return fig


def memorization_qq(f: Frames, folder: str | None = None) -> Figure:
    """Memorized samples per window of training order against a Poisson distribution of the
    same mean: points on the diagonal, a Poisson process."""
    fig, (ax,) = _figure("Memorized samples per window against Poisson",
                         "Poisson quantile", "memorized samples in a window")
    if not f.poisson:
        return _empty(fig, ax, "lmsuite memorization at the last checkpoint")
    names = sizes(f)
    folder = folder or next((n for n in reversed(names) if n in f.poisson),
                            next(iter(f.poisson)))
    view = f.poisson[folder]
    ax.plot(view["qq_poisson"], view["qq_observed"], "o", ms=3, color="black")
    top = float(max(view["qq_poisson"].max(), view["qq_observed"].max(), 1))
    ax.plot([0, top], [0, top], color="gray", lw=0.8)
    ax.set_title(f"{folder}: λ = {float(view['lambda']):.2f} per {int(view['window'])} "
                 f"samples, dispersion {float(view['dispersion']):.2f}", fontsize=9)
    return fig


def predictability(f: Frames) -> Figure:
    """Precision and recall of predicting the largest model's memorized set from smaller
    models (at their last checkpoint) and from the largest model's earlier checkpoints."""
    fig, axes = _figure("Predicting what the largest model memorizes", "", "precision / "
                        "recall", panels=2)
    rows = f.rows[f.rows["task"] == "memorization_prediction"] if not f.rows.empty else f.rows
    rows = rows[rows["dataset"] == "standard"] if not rows.empty else rows
    if rows.empty:
        return _empty(fig, axes[0], "lmsuite memorization on a run with several sizes")
    names = sizes(f)
    largest = names[-1]
    smaller = rows[rows["model"] != largest]
    earlier = rows[rows["model"] == largest]
    for ax, group, key, label in ((axes[0], smaller, "model", "predicting model"),
                                  (axes[1], earlier, "step", f"{largest}'s checkpoint")):
        for metric, marker in (("precision", "o"), ("recall", "s")):
            part = group[group["metric"] == metric]
            if key == "model":
                part = part.set_index("model").reindex([n for n in names if n in
                                                        set(part["model"])])
                ax.plot(range(len(part)), part["value"], marker=marker, label=metric)
                ax.set_xticks(range(len(part)))
                ax.set_xticklabels(part.index, rotation=45, fontsize=7)
            else:
                part = part.sort_values("step")
                ax.plot(part["step"], part["value"], marker=marker, label=metric)
                ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(label)
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=8)
    return fig


def frequency_delta_by_step(f: Frames) -> Figure:
    """Pythia's Δ (accuracy on the 10% most frequent terms minus the 10% least) against step,
    per size: arithmetic by first operand at each shot count, and facts by entity."""
    rows = _rows_of_task(f, "frequency")
    shots = sorted({int(m.removeprefix("delta_arithmetic_").removesuffix("shot"))
                    for m in (rows["metric"] if not rows.empty else [])
                    if m.startswith("delta_arithmetic_")}) or [0]
    panels = [(f"delta_arithmetic_{k}shot", f"arithmetic, {k}-shot") for k in shots]
    panels.append(("delta_facts", "facts"))
    columns = 3 if len(panels) > 3 else len(panels)
    lines = -(-len(panels) // columns)
    fig = Figure(figsize=(WIDTH * 1.5, HEIGHT * 0.8 * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:len(panels)]:  # the study's steps lie late in training: a linear axis
        ax.grid(alpha=0.3)
    for ax in axes[-columns:]:
        ax.set_xlabel("step")
    for ax in axes[::columns]:
        ax.set_ylabel("Δ accuracy (top − bottom 10%)")
    fig.suptitle("The effect of term frequency against training step")
    found = False
    for ax, (metric, title) in zip(axes, panels, strict=False):
        rows = _trained(_rows(f, "frequency", metric), f)
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="gray", lw=0.8)
        for (model, dataset), group in rows.groupby(["model", "dataset"]) if not rows.empty \
                else []:
            found = True
            group = group.sort_values("step")
            ax.plot(group["step"], group["value"], _style(dataset), marker=".",
                    color=colours(f).get(model))
    if not found:
        return _empty(fig, axes[0], "lmsuite frequency")
    _legend(axes[len(panels) - 1], f)
    return fig


def _rows_of_task(f: Frames, task: str):
    return f.rows if f.rows.empty else f.rows[f.rows["task"] == task]


def accuracy_by_frequency(f: Frames, model: str | None = None) -> Figure:
    """At the last checkpoint, accuracy against how often the term occurred in training, in
    tenths of the terms by count (Razeghi et al.'s plot)."""
    fig, axes = _figure("Accuracy against pretraining term frequency (last checkpoint)",
                        "occurrences of the term in training (log)", "accuracy", panels=2)
    curves = f.frequency
    if curves.empty:
        return _empty(fig, axes[0], "lmsuite frequency")
    model = model or sizes(f)[-1]
    curves = curves[(curves["model"] == model) & (curves["dataset"] == "standard")]
    if curves.empty:
        return _empty(fig, axes[0], f"lmsuite frequency on {model}")
    last = curves[curves["step"] == curves["step"].max()]
    for ax, tasks in ((axes[0], [t for t in sorted(set(last["task"])) if t != "facts"]),
                      (axes[1], ["facts"])):
        for task in tasks:
            part = last[last["task"] == task].sort_values("count")
            bins = [part.iloc[i] for i in np.array_split(np.arange(len(part)),
                                                          min(10, len(part)))]
            ax.plot([b["count"].median() for b in bins], [b["acc"].mean() for b in bins],
                    marker="o", label=task)
        ax.set_xscale("symlog", linthresh=1)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{model}: arithmetic by first operand", fontsize=9)
    axes[1].set_title(f"{model}: facts by entity", fontsize=9)
    return fig


def _branches(f: Frames):
    if f.suite.empty:
        return f.suite
    return f.suite[f.suite["branch_of"].notna()]


def intervention_bias(f: Frames) -> Figure:
    """The bias metrics of each intervened model (a branch swapping pronouns from its fork)
    and of its original, from the fork on, with their standard errors."""
    metrics = [("pronouns", "p_he_male_stereotyped"), ("pronouns", "p_he_female_stereotyped"),
               ("stereotypes", "pct_stereotype"), ("pronouns", "gap")]
    fig, axes = _figure("The pronoun intervention: bias from the fork on", "step", "value",
                        panels=len(metrics))
    branches = _branches(f)
    if branches.empty:
        return _empty(fig, axes[0], "lmsuite intervene")
    cmap = colormaps["tab10"]
    for ax, (task, metric) in zip(axes, metrics, strict=True):
        ax.set_title(metric, fontsize=9)
        rows = _rows(f, task, metric)
        for i, (_, branch) in enumerate(branches.iterrows()):
            original = rows[(rows["model"] == runs.split_model_folder(branch["branch_of"])[0]) &
                            (rows["dataset"] == branch["dataset"]) &
                            (rows["step"] >= branch["fork_step"])].sort_values("step")
            mine = rows[rows["model"] == branch["model"]].sort_values("step")
            colour = cmap(i)
            for part, style in ((original, ":"), (mine, "-")):
                if part.empty:
                    continue
                err = part.get("stderr")
                ax.errorbar(part["step"], part["value"], yerr=err, fmt=style, color=colour,
                            marker=".", capsize=2, lw=1)
        if metric == "pct_stereotype":
            ax.axhline(0.5, color="gray", lw=0.8)
    from matplotlib.lines import Line2D

    axes[-1].legend(handles=[Line2D([], [], color=cmap(i), label=b["model"]) for i, (_, b) in
                             enumerate(branches.iterrows())] +
                    [Line2D([], [], color="black", ls=":", label="original"),
                     Line2D([], [], color="black", ls="-", label="intervened")], fontsize=6)
    return fig


def intervention_cost(f: Frames) -> Figure:
    """What the intervention costs language modelling: validation loss and LAMBADA-style
    perplexity at the last checkpoint, original against intervened."""
    fig, axes = _figure("The pronoun intervention: language modelling", "", "", panels=2)
    branches = _branches(f)
    if branches.empty:
        return _empty(fig, axes[0], "lmsuite intervene")
    for ax, (task, metric, label) in zip(axes, (("perplexity", "loss", "validation loss"),
                                                ("lambada", "ppl", "LAMBADA perplexity")),
                                         strict=True):
        rows = _rows(f, task, metric)
        names, before, after = [], [], []
        for _, branch in branches.iterrows():
            last = branch["steps"]
            original = rows[(rows["model"] == runs.split_model_folder(branch["branch_of"])[0]) &
                            (rows["dataset"] == branch["dataset"]) & (rows["step"] == last)]
            mine = rows[(rows["model"] == branch["model"]) & (rows["step"] == last)]
            if original.empty or mine.empty:
                continue
            names.append(branch["model"].replace("-swap-pronouns", "\n"))
            before.append(float(original["value"].iloc[0]))
            after.append(float(mine["value"].iloc[0]))
        x = np.arange(len(names))
        ax.bar(x - 0.2, before, 0.4, label="original", color="lightgray")
        ax.bar(x + 0.2, after, 0.4, label="intervened", color="tab:purple")
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=6)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return fig


FIGURES = {
    "loss": loss_by_tokens, "lambada": lambada_by_step,
    "lambada_ppl": lambada_perplexity_by_step, "validation_loss": validation_loss_by_step,
    "scaling": scaling, "bias": bias_by_step, "memorization": memorization_by_step,
    "duplicates": memorization_by_duplicates, "poisson": memorization_qq,
    "predictability": predictability, "frequency_delta": frequency_delta_by_step,
    "frequency_curves": accuracy_by_frequency, "intervention_bias": intervention_bias,
    "intervention_cost": intervention_cost,
}
"""Every figure of the report, by the name of its file."""
