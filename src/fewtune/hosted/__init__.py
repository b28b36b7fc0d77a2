"""A client of OpenAI-compatible fine-tuning APIs (a provider, or ``fewtune serve``): upload, create and
follow a job (:mod:`.api`). The hosted-ft rows that use it are :mod:`fewtune.run.hosted_rows`."""
