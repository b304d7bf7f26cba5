"""The report of a run: figures and findings drawn from the run folder's files alone.

    from lmsuite.results import frames
    from lmsuite import report
    fig = report.lambada_by_step(frames("runs/tiny"))   # a matplotlib Figure
"""

from lmsuite.report.figures import (
    FIGURES,
    accuracy_by_frequency,
    bias_by_step,
    frequency_delta_by_step,
    intervention_bias,
    intervention_cost,
    lambada_by_step,
    lambada_perplexity_by_step,
    loss_by_tokens,
    memorization_by_duplicates,
    memorization_by_step,
    memorization_qq,
    metric_by_step,
    predictability,
    scaling,
    validation_loss_by_step,
)
from lmsuite.report.findings import findings
from lmsuite.report.page import write_report

__all__ = ["FIGURES", "accuracy_by_frequency", "bias_by_step", "findings",
           "frequency_delta_by_step", "intervention_bias", "intervention_cost",
           "lambada_by_step", "lambada_perplexity_by_step", "loss_by_tokens",
           "memorization_by_duplicates", "memorization_by_step", "memorization_qq",
           "metric_by_step", "predictability", "scaling", "validation_loss_by_step",
           "write_report"]
