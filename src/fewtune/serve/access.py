"""Who may reach what: the API key, the operator key, loopback hosts, and the keys of remote arms.

Checked when ``fewtune serve`` starts (one-line errors before any model loads); the keys are never printed
or logged.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from fewtune.errors import ConfigError
from fewtune.serve.operator import ADMIN_KEY_ENV

API_KEY_ENV = "FEWTUNE_API_KEY"


def is_loopback(host: str) -> bool:
    """``host`` is only reachable from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth(host: str, api_key: str | None, no_auth: bool) -> str | None:
    """The API key to require (None: no authentication), or a :class:`ConfigError` saying what is missing."""
    if no_auth:
        if api_key:
            raise ConfigError("--no-auth and --api-key contradict each other; give one")
        if not is_loopback(host):
            raise ConfigError(
                f"--no-auth serves without an API key, so it only binds a loopback host "
                f"(127.0.0.1, localhost, ::1), not {host}; set --api-key or {API_KEY_ENV} instead"
            )
        return None
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if not key:
        raise ConfigError(
            f"an API key is required: pass --api-key or set {API_KEY_ENV} "
            "(or --no-auth to serve on a loopback host without one)"
        )
    return key


def check_admin_key(admin_key: str | None, api_key: str | None) -> str | None:
    """The operator key (``--admin-key``, else ``FEWTUNE_ADMIN_KEY``), never the API key itself."""
    key = admin_key or os.environ.get(ADMIN_KEY_ENV) or None
    if key is not None and api_key is not None and key == api_key:
        raise ConfigError("--admin-key must differ from the API key: it is what the API key may not do")
    return key


def arm_keys(values: Sequence[str]) -> dict[str, str]:
    """``--arm-key-env HOST=VAR`` pairs -> host -> the key in VAR (a one-line error when VAR is unset)."""
    keys: dict[str, str] = {}
    for value in values:
        host, sep, var = value.partition("=")
        host, var = host.strip().lower(), var.strip()
        if not sep or not host or not var or any(c in host for c in "/ @?#"):
            raise ConfigError(
                f"--arm-key-env takes HOST=VAR (e.g. api.example.com=EXAMPLE_KEY), got {value!r}"
            )
        key = os.environ.get(var)
        if not key:
            raise ConfigError(f"--arm-key-env {host}: the environment variable {var} is not set")
        keys[host] = key
    return keys
