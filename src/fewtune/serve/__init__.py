"""An OpenAI-compatible server for a base model and its LoRA adapters (``fewtune serve``).

One process serves the base model and every adapter of a run folder; a request picks one by its ``model``
field (vLLM's convention): the base model's served name or an adapter's name. Adapters stay separate peft
modules on the one base (never merged), so loading one at run time costs its few megabytes, and
``POST /v1/load_lora_adapter`` / ``POST /v1/unload_lora_adapter`` (vLLM's endpoints and bodies) add and
drop them without a restart.

Endpoints: ``/v1/completions`` (greedy; ``echo`` + ``logprobs`` give prompt-token log-probabilities, so a
client can score labels with ``max_tokens: 0``), ``/v1/chat/completions`` (chat template, or the messages
joined by newlines; ``response_format`` ``json_schema`` is enforced with xgrammar), ``/v1/models``,
``/health`` and Prometheus ``/metrics``. Concurrent requests are queued and batched by one worker thread
that owns the model (:mod:`fewtune.serve.engine`).

fewtune saves adapters with peft's ``save_pretrained`` (``adapter_config.json`` +
``adapter_model.safetensors``), the layout vLLM and LoRAX load, so on a GPU the same adapters can be served
by vLLM::

    vllm serve BASE_MODEL_FOLDER --enable-lora --max-lora-rank 8 \\
        --lora-modules lora-n200=runs/sst2/adapters/lora-n200 lora-n400=runs/sst2/adapters/lora-n400

and clients written against this server work there unchanged (same ``model`` names, same endpoints).

Modules: :mod:`~fewtune.serve.adapters` (the peft model and its adapters, and what may be loaded),
:mod:`~fewtune.serve.tokens` (prompt log-probabilities, the shared prefix), :mod:`~fewtune.serve.jobs`
(what the queue holds, and how a job is stopped early), :mod:`~fewtune.serve.engine` (queue, batching,
worker), :mod:`~fewtune.serve.protocol` (request and response shapes), :mod:`~fewtune.serve.limits` (what
one request may ask), :mod:`~fewtune.serve.guard` (Host, key and body checks, before any endpoint),
:mod:`~fewtune.serve.observe` (metrics and the request log), :mod:`~fewtune.serve.app` (the FastAPI app)
and :mod:`~fewtune.serve.launch` (the CLI command). Nothing here is imported by ``fewtune --help``.
"""
