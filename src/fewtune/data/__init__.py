"""Loading, checking and splitting labelled examples."""

from fewtune.data.load import Example, load_examples
from fewtune.data.split import DataReport, PreparedData, prepare_data

__all__ = ["DataReport", "Example", "PreparedData", "load_examples", "prepare_data"]
