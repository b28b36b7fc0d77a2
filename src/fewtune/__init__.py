"""fewtune: measure few-shot prompting against LoRA fine-tuning on your own labelled data."""

__version__ = "0.1.0"
