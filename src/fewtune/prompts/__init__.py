"""Prompt template and demo selection."""

from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import PromptTemplate

__all__ = ["PromptTemplate", "select_demos"]
