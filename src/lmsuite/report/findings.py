"""The effects the built-in corpus plants, each checked against what the run measured: the
direction expected, the numbers, the test that decides, and found / not found / not measured.
Computed from the result rows, never written by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmsuite import runs
from lmsuite.report.figures import sizes
from lmsuite.results import Frames


@dataclass
class Finding:
    effect: str
    expected: str
    measured: str
    test: str
    verdict: str
    """"found", "not found" or "not measured"."""


def _value(f: Frames, model: str, dataset: str, task: str, metric: str, step=None):
    """(value, n, stderr) of a row at `step` (default: the model's last), or None."""
    rows = f.rows
    if rows.empty:
        return None
    rows = rows[(rows["model"] == model) & (rows["dataset"] == dataset) &
                (rows["task"] == task) & (rows["metric"] == metric)]
    if rows.empty:
        return None
    row = rows[rows["step"] == (rows["step"].max() if step is None else step)]
    if row.empty:
        return None
    row = row.iloc[-1]
    stderr = row["stderr"] if "stderr" in row and row["stderr"] == row["stderr"] else None
    return float(row["value"]), int(row["n"]), stderr


def _params(f: Frames) -> dict[str, int]:
    return f.suite.drop_duplicates("model").set_index("model")["parameters"].to_dict()


def _fisher(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """One-sided p-value that rate a exceeds rate b by chance (Fisher's exact test)."""
    from scipy.stats import fisher_exact

    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def _spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.std(y) == 0:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("found" if ok else "not found")


def lambada(f: Frames) -> list[Finding]:
    names = sizes(f)
    if not names:
        return [Finding("LAMBADA-style accuracy rises with size", "", "", "", "not measured")]
    last = {n: _value(f, n, "standard", "lambada", "acc") for n in names}
    largest = last.get(names[-1])
    out = []
    if largest is None:
        out.append(Finding("The largest size learns the long-range copy (LAMBADA-style)",
                           "accuracy clearly above zero", "", "", "not measured"))
    else:
        acc, n, _ = largest
        se = math.sqrt(acc * (1 - acc) / n)
        out.append(Finding("The largest size learns the long-range copy (LAMBADA-style)",
                           "accuracy at the end clearly above zero",
                           f"{names[-1]}: {acc:.3f} ± {se:.3f} (n = {n})",
                           "accuracy − 2 standard errors > 0", _verdict(acc - 2 * se > 0)))
    measured = [(n, v[0]) for n, v in last.items() if v is not None]
    params = _params(f)
    rho, p = _spearman([params[n] for n, _ in measured], [v for _, v in measured])
    out.append(Finding("LAMBADA-style accuracy is ordered by size",
                       "accuracy at the end rises with parameters",
                       ", ".join(f"{n} {v:.3f}" for n, v in measured) +
                       f"; Spearman ρ = {rho:.2f}, p = {p:.3f}",
                       "ρ > 0, p < 0.05", _verdict(None if math.isnan(rho) else
                                                   rho > 0 and p < 0.05)))
    return out


def memorization(f: Frames) -> list[Finding]:
    names = sizes(f)
    out = []
    if not names or _value(f, names[-1], "standard", "memorization", "rate") is None:
        return [Finding("Memorization (duplicates, size, deduplication, control, Poisson)",
                        "", "", "", "not measured")]
    largest = names[-1]
    flags = f.memorization
    last = flags[(flags["model"] == largest) & (flags["dataset"] == "standard")]
    last = last[last["step"] == last["step"].max()]
    many, once = last[last["window_count"] >= 10], last[last["window_count"] == 1]
    p = _fisher(int(many["memorized"].sum()), len(many), int(once["memorized"].sum()),
                len(once)) if len(many) and len(once) else math.nan
    out.append(Finding(
        "Samples seen many times are memorized far more often",
        "the memorized share of samples whose window occurs ≥ 10 times ≫ once",
        f"{largest}: {many['memorized'].mean():.3f} of {len(many)} against "
        f"{once['memorized'].mean():.4f} of {len(once)}; Fisher p = {p:.1e}",
        "higher, one-sided p < 0.01",
        _verdict(None if math.isnan(p) else bool(many["memorized"].mean() >
                                                 once["memorized"].mean() and p < 0.01))))
    params = _params(f)
    counts = [(n, _value(f, n, "standard", "memorization", "count")) for n in names]
    counts = [(n, v[0]) for n, v in counts if v is not None]
    rho, p = _spearman([params[n] for n, _ in counts], [c for _, c in counts])
    out.append(Finding("Larger models memorize more", "memorized samples rise with size",
                       ", ".join(f"{n} {int(c)}" for n, c in counts) +
                       f"; Spearman ρ = {rho:.2f}, p = {p:.3f}", "ρ > 0, p < 0.05",
                       _verdict(None if math.isnan(rho) else rho > 0 and p < 0.05)))
    pooled = {}
    for dataset in ("standard", "deduped"):
        values = [_value(f, n, dataset, "memorization", "count") for n in names]
        values = [v for v in values if v is not None]
        pooled[dataset] = (int(sum(v[0] for v in values)), int(sum(v[1] for v in values)))
    if pooled["deduped"][1]:
        p = _fisher(*pooled["standard"], *pooled["deduped"])
        out.append(Finding("Deduplicated models memorize fewer samples",
                           "fewer memorized samples, summed over sizes",
                           f"standard {pooled['standard'][0]} of {pooled['standard'][1]}, "
                           f"deduped {pooled['deduped'][0]} of {pooled['deduped'][1]}; "
                           f"Fisher p = {p:.1e}", "fewer, one-sided p < 0.01",
                           _verdict(pooled["deduped"][0] < pooled["standard"][0] and p < 0.01)))
    seen = _value(f, largest, "standard", "memorization", "count")
    held = _value(f, largest, "standard", "memorization", "heldout_count")
    if seen and held and held[1]:
        p = _fisher(int(seen[0]), seen[1], int(held[0]), held[1])
        out.append(Finding("Held-out text is not 'memorized' (the control)",
                           "held-out windows' rate far below the training samples'",
                           f"{largest}: seen {seen[0] / seen[1]:.4f} (n = {seen[1]}), "
                           f"held out {held[0] / held[1]:.4f} (n = {held[1]}); "
                           f"Fisher p = {p:.1e}", "lower, one-sided p < 0.01",
                           _verdict(held[0] / held[1] < seen[0] / seen[1] and p < 0.01)))
    view = f.poisson.get(largest)
    if view is not None:
        chi2_p, dispersion = float(view["chi2_p"]), float(view["dispersion"])
        out.append(Finding("Memorized samples arrive like a Poisson process",
                           "counts per window of training order fit Poisson (dispersion ≈ 1)",
                           f"{largest}: λ = {float(view['lambda']):.2f} per "
                           f"{int(view['window'])} samples, dispersion {dispersion:.2f}, "
                           f"χ² p = {chi2_p:.3f}, trend along training ρ = "
                           f"{float(view['position_rho']):.2f}",
                           "χ² goodness of fit p > 0.05",
                           _verdict(None if math.isnan(chi2_p) else chi2_p > 0.05)))
    return out


def frequency(f: Frames) -> list[Finding]:
    names = sizes(f)
    out = []
    params = _params(f)
    for metric, label in (("delta_facts", "facts"),
                          ("delta_arithmetic_0shot", "arithmetic (0-shot)")):
        deltas = [(n, _value(f, n, "standard", "frequency", metric)) for n in names]
        deltas = [(n, v[0]) for n, v in deltas if v is not None and v[0] == v[0]]
        if not deltas:
            out.append(Finding(f"Frequent terms are answered better: {label}", "", "", "",
                               "not measured"))
            continue
        larger = deltas[len(deltas) // 2:]
        out.append(Finding(f"Frequent terms are answered better: {label}",
                           "Δ > 0 for the larger half of the sizes",
                           ", ".join(f"{n} {d:+.2f}" for n, d in deltas),
                           "every one of the larger half > 0",
                           _verdict(all(d > 0 for _, d in larger))))
        rho, p = _spearman([params[n] for n, _ in deltas], [d for _, d in deltas])
        out.append(Finding(f"The frequency effect grows with size: {label}",
                           "Δ rises with parameters", f"Spearman ρ = {rho:.2f}, p = {p:.3f}",
                           "ρ > 0, p < 0.05",
                           _verdict(None if math.isnan(rho) else rho > 0 and p < 0.05)))
    return out


def bias(f: Frames) -> list[Finding]:
    names = sizes(f)
    if not names:
        return []
    male = _value(f, names[-1], "standard", "pronouns", "p_he_male_stereotyped")
    female = _value(f, names[-1], "standard", "pronouns", "p_he_female_stereotyped")
    if male is None or female is None:
        return [Finding("The corpus's gender skew is learned", "", "", "", "not measured")]
    se = math.sqrt((male[2] or 0) ** 2 + (female[2] or 0) ** 2)
    return [Finding("The corpus's gender skew is learned",
                    "P(he) higher after male-stereotyped occupations than female-stereotyped",
                    f"{names[-1]}: {male[0]:.3f} ± {male[2] or 0:.3f} against "
                    f"{female[0]:.3f} ± {female[2] or 0:.3f}", "difference > 2 standard errors",
                    _verdict(male[0] - female[0] > 2 * se))]


def intervention(f: Frames) -> list[Finding]:
    branches = f.suite[f.suite["branch_of"].notna()] if not f.suite.empty else f.suite
    if branches.empty:
        return [Finding("The pronoun intervention", "", "", "", "not measured")]
    out = []
    for _, b in branches.iterrows():
        original = runs.split_model_folder(b["branch_of"])[0]
        step, name = int(b["steps"]), b["model"]

        def pair(task, metric, original=original, name=name, step=step, b=b):
            return (_value(f, original, b["dataset"], task, metric, step),
                    _value(f, name, b["dataset"], task, metric, step))

        where = f"{name} (fork at {int(b['fork_step'])})"
        groups = ["p_he_male_stereotyped", "p_he_female_stereotyped", "p_he_balanced"]
        values = [pair("pronouns", g) for g in groups]
        if any(a is None or c is None for a, c in values):
            out.append(Finding(f"{where}: P(she) rises", "", "", "", "not measured"))
            continue
        falls = [a[0] - c[0] > 2 * math.hypot(a[2] or 0, c[2] or 0) for a, c in values]
        out.append(Finding(f"{where}: P(she) rises for every occupation group",
                           "P(he) falls beyond its uncertainty in all three groups",
                           "; ".join(f"{g.removeprefix('p_he_')} {a[0]:.2f} → {c[0]:.2f}"
                                     for g, (a, c) in zip(groups, values, strict=True)),
                           "each fall > 2 standard errors", _verdict(all(falls))))
        a, c = pair("stereotypes", "pct_stereotype")
        if a and c:
            toward = abs(a[0] - 0.5) - abs(c[0] - 0.5)
            out.append(Finding(f"{where}: pct_stereotype moves toward 0.5",
                               "closer to 0.5 beyond its uncertainty",
                               f"{a[0]:.3f} ± {a[2] or 0:.3f} → {c[0]:.3f} ± {c[2] or 0:.3f}",
                               "distance to 0.5 shrinks by > 2 standard errors",
                               _verdict(toward > 2 * math.hypot(a[2] or 0, c[2] or 0))))
        a, c = pair("pronouns", "gap")
        if a and c:
            out.append(Finding(f"{where}: the pro/anti gap shrinks",
                               "WinoBias-style gap smaller beyond its uncertainty",
                               f"{a[0]:+.3f} ± {a[2] or 0:.3f} → {c[0]:+.3f} ± {c[2] or 0:.3f}",
                               "shrinks by > 2 standard errors",
                               _verdict(abs(a[0]) - abs(c[0]) > 2 * math.hypot(a[2] or 0,
                                                                               c[2] or 0))))
        loss, ppl = pair("perplexity", "loss"), pair("lambada", "ppl")
        if loss[0] and loss[1] and ppl[0] and ppl[1]:
            dl = loss[1][0] / loss[0][0] - 1
            dp = ppl[1][0] / ppl[0][0] - 1
            out.append(Finding(f"{where}: language modelling barely changes",
                               "validation loss and LAMBADA-style perplexity move little",
                               f"validation loss {loss[0][0]:.3f} → {loss[1][0]:.3f} "
                               f"({dl:+.1%}); LAMBADA ppl {ppl[0][0]:.1f} → {ppl[1][0]:.1f} "
                               f"({dp:+.1%})", "validation loss within 5%",
                               _verdict(abs(dl) < 0.05)))
    return out


def findings(f: Frames) -> list[Finding]:
    """Every planted effect, checked."""
    return [*lambada(f), *memorization(f), *frequency(f), *bias(f), *intervention(f)]
