"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use: Improving Few-Shot Performance of
Language Models", ICML).

A prompt's demos (their labels, order and recency) bias the model towards some labels. Calibration measures
that bias with content-free inputs in place of the test input, and divides each row's label probabilities by
it: ``q = normalise(p / p_cf)``, i.e. ``log q = log p - log p_cf`` up to a constant. It needs one scoring
pass over the content-free inputs per demo set and costs nothing per request afterwards.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fewtune.strategies.base import Predictor, log_softmax

# The paper's content-free inputs, whose label probabilities are averaged (Zhao et al. 2021, section 5).
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def label_bias(predictor: Predictor, inputs: tuple[str, ...] = CONTENT_FREE_INPUTS) -> tuple[float, ...]:
    """``log p_cf(label)``: the mean over ``inputs`` of the label probabilities (normalised over labels)."""
    if predictor.per_row_demos is not None:
        raise ValueError("calibration needs one demo set for all rows; per-row demos have one per row")
    raw = predictor.raw_scores(list(inputs), batch_size=len(inputs))
    probs = np.exp(log_softmax(raw)).mean(axis=0)
    return tuple(float(v) for v in np.log(probs))


def calibrated(predictor: Predictor, inputs: tuple[str, ...] = CONTENT_FREE_INPUTS) -> Predictor:
    """The same predictor with contextual calibration applied to its scores."""
    return replace(predictor, label_bias=label_bias(predictor, inputs))
