"""hosted-ft: fine-tuning through an OpenAI-compatible fine-tuning API (a provider, or ``fewtune serve``) and
scoring the fine-tuned model on the run's test rows there (:mod:`.run`, over the client in :mod:`.api`)."""
