"""Strategies share one contract: ``fit(train) -> Predictor`` (after dspy's teleprompters)."""

from fewtune.strategies.base import Predictor, Strategy
from fewtune.strategies.fewshot import FewShot

__all__ = ["FewShot", "Predictor", "Strategy"]
