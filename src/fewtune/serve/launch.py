"""``fewtune serve``: check the settings, load the model and its adapters, run uvicorn.

Every setting is checked before the model loads, so a missing key or a bad adapter path is a one-line
error in a second, not after the model has loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fewtune.errors import ConfigError
from fewtune.serve.access import arm_keys, check_admin_key, check_auth, is_loopback
from fewtune.serve.adapters import MAX_ADAPTERS, MAX_RANK, AdapterPolicy, check_adapter_folder, find_adapters
from fewtune.serve.limits import FineTuneLimits, Limits
from fewtune.serve.places import (
    FINETUNE_DIR_NAME,
    REQUEST_LOG_NAME,
    home,
    run_model,
    run_precision,
    served_name_of,
)

if TYPE_CHECKING:
    from fewtune.serve.canary import Canary
    from fewtune.serve.engine import Engine
    from fewtune.serve.finetune.service import FineTuning


@dataclass
class ServeArgs:
    """``fewtune serve``'s options: each field's type, default and docstring are its flag (as ``run``'s come
    from :mod:`fewtune.config`); :func:`settings_from_cli` checks them."""

    model: str | None = None
    """Model to serve (instead of the run folder's)."""
    adapter: list[str] | None = None
    """NAME=PATH of a peft adapter folder to serve too; repeatable."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """Key clients send as 'Authorization: Bearer KEY'; FEWTUNE_API_KEY also sets it."""
    no_auth: bool = False
    """Serve without an API key (loopback hosts only)."""
    admin_key: str | None = None
    """Operator key that route changes, feedback and the fine-tuning API need (sent as 'Authorization: Bearer
    KEY'); FEWTUNE_ADMIN_KEY also sets it. Without one, they are refused when the server has an API key."""
    state_dir: Path | None = None
    """Where the server keeps its state: the request log and the fine-tuning API's folder (default: RUN_DIR,
    else a folder per model in the user's data folder; never the current folder)."""
    request_log: Path | None = None
    """JSON-lines request log (default: STATE_DIR/requests.jsonl)."""
    served_model_name: str | None = None
    """The base model's name in requests (default: the model folder's name)."""
    max_batch: int = 16
    """Most prompts generated together in one batch (scoring, max_tokens 0, takes up to 256)."""
    batch_wait_ms: float = 5.0
    """How long a batch waits for more requests to join it."""
    max_tokens_limit: int = 1024
    """Most new tokens one request may ask for (a limit far below the context length)."""
    max_prompts: int = 64
    """Most prompts in one request."""
    max_body_bytes: int = 1_048_576
    """Largest request body, in bytes (413 above)."""
    max_queue: int = 256
    """Most requests waiting or running at once (429 with Retry-After above)."""
    request_timeout_s: float = 300.0
    """Seconds a request may take, queueing included; past them it is a 504 and its work is stopped."""
    allowed_host: list[str] | None = None
    """A Host name answered besides localhost, 127.0.0.1 and [::1] when serving without a key; repeatable."""
    adapter_root: list[Path] | None = None
    """A folder /v1/load_lora_adapter may load adapters from; repeatable (default: RUN_DIR/adapters and the
    folder of each --adapter)."""
    max_lora_rank: int = MAX_RANK
    """Highest LoRA rank an adapter may have."""
    max_adapters: int = MAX_ADAPTERS
    """Most adapters loaded at once."""
    route: list[str] | None = None
    """NAME=BASELINE,CANDIDATE[:WEIGHT]: a canary route between two methods of the run (or
    METHOD@URL#MODEL arms); WEIGHT is the candidate's share (default 0.05); repeatable."""
    routes_file: Path | None = None
    """Where route weights are kept across restarts (default: RUN_DIR/routes.json)."""
    feedback_log: Path | None = None
    """JSON-lines log of /v1/feedback answers (default: RUN_DIR/feedback.jsonl)."""
    arm_key_env: list[str] | None = None
    """HOST=VAR: send the key in environment variable VAR to the remote arms on HOST (a host name, or
    host:port); repeatable. A remote arm gets no other key."""
    allow_http_arm: bool = False
    """Allow remote arms on plain http:// to another machine (prompts and keys in clear)."""
    costs: str | None = None
    """Price table for each routed request's cost (a preset or YAML file; default: the run's) and for the
    fine-tuning jobs' comparisons (default: auto)."""
    finetune_dir: Path | None = None
    """Where /v1/files and /v1/fine_tuning keep uploaded files, jobs, their events and adapters across
    restarts (default: STATE_DIR/finetune)."""
    no_finetune_api: bool = False
    """Serve without the Files and Fine-tuning APIs (/v1/files, /v1/fine_tuning: 404)."""
    max_train_tokens: int = FineTuneLimits.max_train_tokens
    """Most tokens of one training or validation row (never more than the model's context)."""
    max_files: int = FineTuneLimits.max_files
    """Most fine-tuning files kept at once (DELETE /v1/files/ID frees one)."""
    max_upload_bytes: int = FineTuneLimits.max_upload_bytes
    """Most bytes of fine-tuning files kept at once."""
    max_jobs: int = FineTuneLimits.max_jobs
    """Most fine-tuning jobs waiting or training at once."""
    max_train_steps: int = FineTuneLimits.max_steps
    """Most optimizer steps of one fine-tuning job (epochs x rows / batch size)."""
    max_validation_rows: int = FineTuneLimits.max_validation_rows
    """Most rows of a fine-tuning job's held-out comparison."""
    engine: str = "fewtune"
    """fewtune (this server), or vllm: hand the same model and adapters to `vllm serve` (installed
    separately; each adapter named NAME-SHA8 of its weights, one name per version)."""


ENGINES = ("fewtune", "vllm")


@dataclass
class ServeSettings:
    """What ``fewtune serve`` was asked for, checked by :func:`settings_from_cli`."""

    model: str
    """Model spec (as ``--model`` of ``fewtune run`` takes it)."""
    served_name: str
    """The ``model`` name requests use for the base."""
    adapters: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    """None only with ``--no-auth`` on a loopback host."""
    admin_key: str | None = None
    """The operator key (:mod:`fewtune.serve.operator`)."""
    request_log: Path | None = None
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names answered besides the loopback ones (without a key; ``--allowed-host``)."""
    adapter_policy: AdapterPolicy = field(default_factory=AdapterPolicy)
    """Where ``/v1/load_lora_adapter`` loads from, and the rank and count limits."""
    canary: Canary | None = None
    """The run's methods served by name, and the canary routes over them."""
    finetune_dir: Path | None = None
    """The fine-tuning API's state folder (files, jobs, events, adapters); None: no fine-tuning API."""
    finetune_limits: FineTuneLimits = field(default_factory=FineTuneLimits)
    costs: str | None = None
    """The price table of the fine-tuning jobs' comparisons (a preset, a YAML file, or None: auto)."""
    engine: str = "fewtune"
    """Who serves: this server, or vLLM (:mod:`fewtune.serve.vllm`)."""
    precision: str = "auto"
    """What the model computes in: a run folder's own ``--precision`` (so its methods answer as the run
    measured them), else auto (:mod:`fewtune.backends.precision`)."""


def parse_adapters(values: Sequence[str], max_rank: int = MAX_RANK) -> dict[str, Path]:
    """``NAME=PATH`` pairs of ``--adapter``, each path checked to hold a LoRA adapter that may be served."""
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--adapter takes NAME=PATH, got {value!r}")
        if name in adapters:
            raise ConfigError(f"--adapter: the name {name!r} is given twice")
        adapters[name.strip()] = check_adapter_folder(path.strip(), max_rank)
    return adapters


def settings_from_cli(
    run_dir: Path | None,
    *,
    model: str | None,
    adapter: Sequence[str],
    host: str,
    port: int,
    api_key: str | None,
    no_auth: bool,
    request_log: Path | None,
    served_model_name: str | None,
    max_batch: int,
    batch_wait_ms: float,
    max_tokens_limit: int = Limits.max_tokens,
    max_prompts: int = Limits.max_prompts,
    max_body_bytes: int = Limits.max_body_bytes,
    max_queue: int = Limits.max_queue,
    request_timeout_s: float = Limits.request_timeout_s,
    allowed_host: Sequence[str] | None = None,
    adapter_root: Sequence[Path] | None = None,
    max_lora_rank: int = MAX_RANK,
    max_adapters: int = MAX_ADAPTERS,
    route: Sequence[str] | None = None,
    routes_file: Path | None = None,
    feedback_log: Path | None = None,
    costs: str | None = None,
    finetune_dir: Path | None = None,
    engine: str = "fewtune",
    admin_key: str | None = None,
    arm_key_env: Sequence[str] | None = None,
    allow_http_arm: bool = False,
    state_dir: Path | None = None,
    no_finetune_api: bool = False,
    max_train_tokens: int = FineTuneLimits.max_train_tokens,
    max_files: int = FineTuneLimits.max_files,
    max_upload_bytes: int = FineTuneLimits.max_upload_bytes,
    max_jobs: int = FineTuneLimits.max_jobs,
    max_train_steps: int = FineTuneLimits.max_steps,
    max_validation_rows: int = FineTuneLimits.max_validation_rows,
) -> ServeSettings:
    """Check every ``fewtune serve`` option (before any model loads) and resolve the defaults."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "vllm" and route:
        raise ConfigError("--route: canary routes are fewtune's; serve them with --engine fewtune")
    key = check_auth(host, api_key, no_auth)
    operator_key = check_admin_key(admin_key, key)
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    for flag, value in (
        ("--max-tokens-limit", max_tokens_limit),
        ("--max-prompts", max_prompts),
        ("--max-body-bytes", max_body_bytes),
        ("--max-queue", max_queue),
        ("--max-lora-rank", max_lora_rank),
        ("--max-adapters", max_adapters),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if not request_timeout_s > 0:
        raise ConfigError(f"--request-timeout-s must be more than 0, got {request_timeout_s}")
    hosts = [h.strip() for h in allowed_host or []]
    for name in hosts:
        if not name or any(c in name for c in "/ @?#"):
            raise ConfigError(f"--allowed-host takes a host name (such as box.lan), got {name!r}")
    if batch_wait_ms < 0:
        raise ConfigError(f"--batch-wait-ms must be 0 or more, got {batch_wait_ms}")
    adapters: dict[str, Path] = {}
    precision = "auto"
    if run_dir is not None:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        model = model or run_model(run_dir)
        precision = run_precision(run_dir)
        adapters = {n: check_adapter_folder(p, max_lora_rank) for n, p in find_adapters(run_dir).items()}
    if model is None:
        raise ConfigError("give a run folder (fewtune serve RUN_DIR) or a model (--model SPEC)")
    given = parse_adapters(adapter, max_lora_rank)
    for name, path in given.items():
        if name in adapters:
            raise ConfigError(f"--adapter {name}: the run folder already has an adapter of this name")
        adapters[name] = path
    if len(adapters) > max_adapters:
        raise ConfigError(f"{len(adapters)} adapters to serve, over --max-adapters {max_adapters}")
    roots = list(adapter_root or [])
    for root in roots:
        if not root.expanduser().is_dir():
            raise ConfigError(f"--adapter-root {root}: no such folder")
    if not roots:  # the folders the adapters served from the start come from
        roots = [run_dir / "adapters"] if run_dir is not None else []
        roots += [path.parent for path in given.values()]
    served = served_model_name or served_name_of(model)
    if served in adapters:
        raise ConfigError(f"{served}: an adapter has the base model's name; set --served-model-name")
    state = home(state_dir, run_dir, served)
    from fewtune.serve.canary import build_canary
    from fewtune.serve.routes import parse_route

    routes = [parse_route(value) for value in route or []]
    if len({r.name for r in routes}) != len(routes):
        raise ConfigError("--route: a route name is given twice")
    taken = {served, *adapters} & {r.name for r in routes}
    if taken:
        raise ConfigError(f"--route {sorted(taken)[0]}: the name is already a model or adapter name")
    canary = build_canary(
        run_dir, adapters, routes, routes_file, feedback_log, costs, request_timeout_s,
        arm_keys(arm_key_env or []), allow_http_arm,
    )  # fmt: skip
    finetune_dir = finetune_dir or state / FINETUNE_DIR_NAME
    if finetune_dir.exists() and not finetune_dir.is_dir():
        raise ConfigError(f"--finetune-dir {finetune_dir} is a file; give a folder")
    limits = FineTuneLimits(
        max_train_tokens, max_files, max_upload_bytes, max_jobs, max_train_steps, max_validation_rows
    )
    if costs is not None:
        from fewtune.decide.cost import load_price_table

        load_price_table(costs)  # a bad --costs file fails now, not at a job's end
    return ServeSettings(
        model=model,
        precision=precision,
        served_name=served,
        adapters=adapters,
        host=host,
        port=port,
        api_key=key,
        admin_key=operator_key,
        request_log=request_log or state / REQUEST_LOG_NAME,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        limits=Limits(max_tokens_limit, max_prompts, max_body_bytes, max_queue, request_timeout_s),
        allowed_hosts=[*hosts, *([host] if is_loopback(host) else [])],
        adapter_policy=AdapterPolicy.of(roots, max_rank=max_lora_rank, max_adapters=max_adapters),
        canary=canary,
        finetune_dir=None if no_finetune_api else finetune_dir,
        finetune_limits=limits,
        costs=costs,
        engine=engine,
    )


def build_engine(settings: ServeSettings) -> Engine:
    """Load the base model and every adapter (one-line :class:`ModelError` s) into a new engine."""
    from fewtune.backends.models import load_model, resolve_model
    from fewtune.serve.adapters import AdapterSet
    from fewtune.serve.engine import Engine

    folder = resolve_model(settings.model)
    model, tokenizer = load_model(folder, precision=settings.precision)
    adapters = AdapterSet(
        model, tokenizer, settings.served_name, source=str(folder), policy=settings.adapter_policy
    )
    for name, path in settings.adapters.items():
        adapters.load(name, path)
    return Engine(adapters, max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms)


def build_finetune(settings: ServeSettings, engine: Engine) -> FineTuning:
    """The fine-tuning API over ``engine``: its state folder, and a fresh copy of the base model for each
    job's training (loaded by the job, so the engine's own copy keeps serving)."""
    from fewtune.backends.hf import HFBackend
    from fewtune.backends.models import load_model, resolve_model
    from fewtune.decide.cost import load_price_table
    from fewtune.serve.finetune.service import FineTuning
    from fewtune.serve.finetune.state import FineTuneStore

    if settings.finetune_dir is None:
        raise ConfigError("the fine-tuning API is off (--no-finetune-api)")
    folder = resolve_model(settings.model)

    def fresh_base() -> HFBackend:
        model, tokenizer = load_model(folder, precision=settings.precision)
        return HFBackend(model, tokenizer, name=settings.served_name, source=str(folder))

    device = str(getattr(engine.adapters.model, "device", "cpu"))
    prices = load_price_table(settings.costs, device)
    store = FineTuneStore(settings.finetune_dir)
    return FineTuning(store, engine, fresh_base, prices, limits=settings.finetune_limits)


def serve(settings: ServeSettings, say: Callable[[str], None] = print) -> None:
    """Load everything, then serve until interrupted (Ctrl-C or SIGTERM: uvicorn finishes the requests
    under way, then stops)."""
    import uvicorn

    from fewtune.serve.app import create_app

    engine = build_engine(settings)
    finetune = build_finetune(settings, engine) if settings.finetune_dir is not None else None
    app = create_app(
        engine,
        api_key=settings.api_key,
        admin_key=settings.admin_key,
        request_log=settings.request_log,
        limits=settings.limits,
        hosts=settings.allowed_hosts,
        canary=settings.canary,
        finetune=finetune,
    )
    methods = settings.canary.names() if settings.canary else []
    names = ", ".join([settings.served_name, *settings.adapters, *methods])
    auth = "API key required" if settings.api_key else "no authentication (loopback only)"
    say(f"serving {names} at http://{settings.host}:{settings.port}/v1 ({auth}; log: {settings.request_log})")
    if settings.admin_key is None and settings.api_key is not None:
        say("route changes, feedback and fine-tuning are off: no operator key (--admin-key)")
    if finetune is not None:
        say(f"fine-tuning API at /v1/fine_tuning/jobs (jobs, files and adapters in {settings.finetune_dir})")
    # uvicorn re-raises the signal it shut down on (Ctrl-C, SIGTERM); stopping is the normal end here.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
