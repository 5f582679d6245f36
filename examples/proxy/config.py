"""The proxy's configuration file (TOML, or JSON by extension), parsed and checked once.

Every mistake is reported with the key that holds it (``upstreams[1].base_url: ...``)
when the proxy starts, never on a request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import cclb_wire as cw
from cclb_wire.plugin_paths import resolve_plugin_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

HOOKS = ("filter", "shape", "observe")
#: The tables a config file may have, and the keys [server] may have.
TOP_LEVEL_TABLES = ("server", "admin", "host", "keys", "upstreams", "plugins", "prices")
SERVER_KEYS = (
    "host", "port", "reload_poll_s", "upstream_timeout_s", "keep_alive_s", "max_connections", "debug_endpoints",
    "thread_id_header", "max_body_bytes", "shutdown_timeout_s", "header_timeout_s", "max_attempts", "access_log",
    "upstream_client", "http_parser", "event_loop", "body_timeout_s", "max_client_connections",
)


#: An upstream's cache predictions besides predicted_cache_read_tokens (cc-lb 1.0 filters see them).
PREDICTION_FIELDS = ("predicted_cache_creation_tokens_5m", "predicted_cache_creation_tokens_1h", "predicted_uncached_input_tokens")
#: An upstream's tiers (cc-lb 1.0 filters see them).
TIER_FIELDS = ("organization_type", "rate_limit_tier", "seat_tier")
#: A model's prices in ``[prices."model"]``, micro-units per million tokens.
PRICE_FIELDS = (
    "input_micros_per_million",
    "cache_creation_5m_micros_per_million",
    "cache_creation_1h_micros_per_million",
    "cache_read_micros_per_million",
)


#: uvloop where it is installed (the proxy extra installs it; it has no Windows build),
#: else asyncio's own loop.
DEFAULT_EVENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"

#: The proxy's default per-call deadline: hook calls run inline, on the event loop.
INLINE_DEADLINE_S = 0.05


class ConfigError(ValueError):
    """A bad configuration file; the message names the key."""


@dataclass(frozen=True)
class ApiKey:
    digest: bytes  # sha256 of the key: the proxy never keeps downstream keys in clear
    principal: cw.Principal


@dataclass(frozen=True)
class Upstream:
    id: uuid.UUID
    name: str
    kind: str
    base_url: str  # as written, without a trailing "/"
    api_key: str
    predicted_cache_read_tokens: int
    candidate: cw.UpstreamCandidate
    target: cw.AnthropicDirect


@dataclass(frozen=True)
class PluginSlot:
    hook: str  # "filter" | "shape" | "observe"
    name: str
    path: Path
    failure_policy: Optional[cw.FailurePolicy]  # None: [host].failure_policy
    offload_to_thread: bool


@dataclass(frozen=True)
class ProxyConfig:
    source: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    #: Seconds between checks of the plugin files' mtimes; 0 turns the poll off (SIGHUP still reloads).
    reload_poll_s: float = 1.0
    upstream_timeout_s: float = 600.0
    #: How long an idle downstream connection is kept: longer than clients keep theirs.
    keep_alive_s: float = 75.0
    max_connections: int = 256
    #: GET /debug/hook-times: raw per-request hook times, for the load test.
    debug_endpoints: bool = False
    #: The admin listener (/healthz, /metrics, /debug/*): loopback unless said otherwise.
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    #: The request parser: "httptools" (C, the default) or "h11" (pure Python).
    http_parser: str = "httptools"
    #: The event loop: "uvloop" (the default where it exists) or "asyncio".
    event_loop: str = DEFAULT_EVENT_LOOP
    #: The client to the upstreams: "httptools" (the proxy's own, upstream_client.py), "aiohttp" or "httpx".
    upstream_client: str = "httptools"
    #: One JSON line per request on the ``cclb_proxy.access`` logger.
    access_log: bool = False
    #: Upstreams tried per request (failover to the next kept one), at least 1.
    max_attempts: int = 2
    #: A request head must arrive whole within this many seconds (slowloris).
    header_timeout_s: float = 10.0
    #: A request body must arrive whole within this many seconds; else 408.
    body_timeout_s: float = 60.0
    #: Open client connections at most; past it, requests get 503.
    max_client_connections: int = 1024
    #: On SIGTERM, how long requests in flight may take to finish before the process exits.
    shutdown_timeout_s: float = 30.0
    #: The largest request body read, in bytes (the Messages API's own limit); larger: 413.
    max_body_bytes: int = 32 * 1024 * 1024
    #: The request header whose value is a cc-lb 1.0 filter's ``thread_id`` ("" : none).
    thread_id_header: str = "x-claude-code-session-id"
    #: model id -> its prompt-cache prices, for cc-lb 1.0 filters (``[prices."model"]``).
    prices: Mapping[str, cw.CachePricing] = field(default_factory=dict)
    host: cw.HostConfig = field(default_factory=cw.HostConfig)
    keys: Tuple[ApiKey, ...] = ()
    upstreams: Tuple[Upstream, ...] = ()
    slots: Mapping[str, PluginSlot] = field(default_factory=dict)


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _table(parent: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = parent.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{name}: expected a table")
    return value


def _get(table: Mapping[str, Any], name: str, kind: Any, where: str, default: Any = ...) -> Any:
    if name not in table:
        if default is ...:
            raise ConfigError(f"{where}{name}: required")
        return default
    value = table[name]
    # bool is an int in Python, but `port = true` is a mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}{name}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _check_table(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where[:-1]}: expected a table")


def _choice(table: Mapping[str, Any], name: str, choices: Tuple[str, ...], default: str) -> str:
    value: str = _get(table, name, str, "server.", default)
    if value not in choices:
        raise ConfigError(f"server.{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _installed(module: str, name: str) -> str:
    """``module`` if it can be imported (asyncio and h11 always can); else a ConfigError."""
    if module not in ("asyncio", "h11") and importlib.util.find_spec(module) is None:
        raise ConfigError(f"server.{name}: {module!r} is not installed (pip install {module}, or pip install '.[proxy]')")
    return module


def _known_keys(table: Mapping[str, Any], where: str, known: Any) -> None:
    """A key the proxy does not read is a mistake (a typo would silently keep the default)."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})")


def _non_negative_seconds(table: Mapping[str, Any], name: str, default: float) -> float:
    value = float(_get(table, name, (int, float), "server.", default))
    if not value >= 0:
        raise ConfigError(f"server.{name}: must be 0 or a positive number of seconds, got {value}")
    return value


def _seconds(table: Mapping[str, Any], name: str, default: float) -> float:
    value = float(_get(table, name, (int, float), "server.", default))
    if not value > 0:
        raise ConfigError(f"server.{name}: must be a positive number of seconds, got {value}")
    return value


def _positive(table: Mapping[str, Any], name: str, default: int) -> int:
    value: int = _get(table, name, int, "server.", default)
    if value <= 0:
        raise ConfigError(f"server.{name}: must be positive, got {value}")
    return value


def _secret(table: Mapping[str, Any], where: str, name: str) -> str:
    """``name`` in clear, or ``name_env``: the environment variable that holds it."""
    if name in table:
        return str(_get(table, name, str, where))
    env = _get(table, f"{name}_env", str, where, None)
    if env is None:
        raise ConfigError(f"{where}{name}: required (or {name}_env)")
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"{where}{name}_env: environment variable {env} is not set")
    return value


def _wasm_path(text: str, base: Path, where: str) -> Path:
    """``wasm = "..."``: a path relative to the config file, or ``cclb_wire:NAME.wasm``, a
    plugin shipped in the package (cclb_wire.plugin_paths)."""
    try:
        path = (base / resolve_plugin_path(text, f"{where}wasm")).resolve()
    except cw.InvalidInput as exc:
        raise ConfigError(str(exc)) from None
    if not path.is_file():
        raise ConfigError(f"{where}wasm: {path} is not a file")
    return path


def load(path: os.PathLike[str] | str) -> ProxyConfig:
    source = Path(path).resolve()
    try:
        raw = source.read_bytes()
        data = json.loads(raw) if source.suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    base = source.parent

    server = _table(data, "server", "")
    host_table = dict(_table(data, "host", ""))
    bounds = host_table.pop("bounds", None)
    try:
        if bounds is not None:
            host_table["bounds"] = cw.WireBounds(**bounds)
        # The shape plugin chooses the URL the upstream's credentials are sent to: keep it
        # on that upstream's origin unless the config says otherwise.
        host_table.setdefault("origin_policy", "selected_upstream_origin")
        # Hook calls run on the event loop and take microseconds: a plugin that hangs may
        # stall the loop one short deadline, and then its slot fails fast (the breaker)
        # for a cool-down instead of stalling every request.
        host_table.setdefault("deadline_s", INLINE_DEADLINE_S)
        host_table.setdefault("breaker_failures", 1)
        host_config = cw.HostConfig(**host_table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"host: {exc}") from exc

    keys = []
    for i, entry in enumerate(_get(data, "keys", list, "")):
        where = f"keys[{i}]."
        _check_table(entry, where)
        try:
            principal = cw.Principal(
                _get(entry, "principal", str, where),
                _get(entry, "kind", str, where, "api_key"),
                _get(entry, "claims", dict, where, {}),
            )
        except ValueError as exc:
            raise ConfigError(f"{where[:-1]}: {exc}") from exc
        secret = _secret(entry, where, "key")
        if not secret.strip():
            raise ConfigError(f"{where}key: empty (an empty x-api-key header would authenticate)")
        digest = key_digest(secret.encode("utf-8"))
        if any(known.digest == digest for known in keys):
            raise ConfigError(f"{where}key: the same key as an earlier entry (one key, one principal)")
        keys.append(ApiKey(digest, principal))

    upstreams = []
    loaded_at = int(time.time())  # the candidates' scores are static: observed when the config was read
    for i, entry in enumerate(_get(data, "upstreams", list, "")):
        where = f"upstreams[{i}]."
        _check_table(entry, where)
        try:
            upstream_id = uuid.UUID(_get(entry, "id", str, where))
            name, kind = _get(entry, "name", str, where), _get(entry, "kind", str, where, "anthropic_api_key")
            base_url = _get(entry, "base_url", str, where).rstrip("/")
            tokens = _get(entry, "predicted_cache_read_tokens", int, where, 0)
            score = cw.CacheScore(
                tokens,
                *(_get(entry, field, int, where, 0) for field in PREDICTION_FIELDS),
            )
            # The candidate is built once: its fields are fixed, and building checks them.
            # The fields after the score are cc-lb 1.0's (a 0.2 filter does not see them).
            candidate = cw.UpstreamCandidate(
                upstream_id, name, kind, loaded_at, score,
                float(_get(entry, "plan_capacity_ratio", (int, float), where, 1.0)),
                *(_get(entry, field, str, where, "") for field in TIER_FIELDS),
            )
            target = cw.AnthropicDirect(base_url)
        except ValueError as exc:
            raise ConfigError(f"{where[:-1]}: {exc}") from exc
        upstreams.append(
            Upstream(upstream_id, name, kind, base_url, _secret(entry, where, "api_key"), tokens, candidate, target)
        )
    if not upstreams:
        raise ConfigError("upstreams: at least one upstream is required")

    slots: Dict[str, PluginSlot] = {}
    plugins = _table(data, "plugins", "")
    for hook in plugins:
        if hook not in HOOKS:
            raise ConfigError(f"plugins.{hook}: unknown hook (expected one of {', '.join(HOOKS)})")
    for hook in HOOKS:
        if hook not in plugins:
            continue
        entry = _table(plugins, hook, "plugins.")
        where = f"plugins.{hook}."
        policy = _get(entry, "failure_policy", str, where, None)
        try:
            failure_policy = None if policy is None else cw.FailurePolicy(policy.lower())
        except ValueError:
            raise ConfigError(f"{where}failure_policy: {policy!r} is not pass_through or fail_closed") from None
        slots[hook] = PluginSlot(
            hook,
            _get(entry, "name", str, where, hook),
            _wasm_path(_get(entry, "wasm", str, where), base, where),
            failure_policy,
            _get(entry, "offload_to_thread", bool, where, False),
        )

    prices: Dict[str, cw.CachePricing] = {}
    for model, entry in _table(data, "prices", "").items():
        where = f"prices.{model}."
        _check_table(entry, where)
        unknown = set(entry) - {"status", *PRICE_FIELDS}
        if unknown:
            raise ConfigError(f"{where}{sorted(unknown)[0]}: unknown key (expected status, {', '.join(PRICE_FIELDS)})")
        try:
            prices[model] = cw.CachePricing(
                _get(entry, "status", str, where, "known"),
                *(_get(entry, field, int, where, None) for field in PRICE_FIELDS),
            )
        except ValueError as exc:
            raise ConfigError(f"{where[:-1]}: {exc}") from exc

    admin = _table(data, "admin", "")
    _known_keys(data, "", TOP_LEVEL_TABLES)
    _known_keys(server, "server.", SERVER_KEYS)
    _known_keys(admin, "admin.", ("host", "port"))
    config = ProxyConfig(
        source=source,
        listen_host=_get(server, "host", str, "server.", "127.0.0.1"),
        listen_port=_get(server, "port", int, "server.", 8080),
        reload_poll_s=_non_negative_seconds(server, "reload_poll_s", 1.0),
        upstream_timeout_s=_seconds(server, "upstream_timeout_s", 600.0),
        keep_alive_s=_seconds(server, "keep_alive_s", 75.0),
        max_connections=_get(server, "max_connections", int, "server.", 256),
        debug_endpoints=_get(server, "debug_endpoints", bool, "server.", False),
        thread_id_header=_get(server, "thread_id_header", str, "server.", "x-claude-code-session-id").lower(),
        max_body_bytes=_positive(server, "max_body_bytes", 32 * 1024 * 1024),
        shutdown_timeout_s=_non_negative_seconds(server, "shutdown_timeout_s", 30.0),
        header_timeout_s=_seconds(server, "header_timeout_s", 10.0),
        max_attempts=_positive(server, "max_attempts", 2),
        access_log=_get(server, "access_log", bool, "server.", False),
        upstream_client=_installed(_choice(server, "upstream_client", ("httptools", "aiohttp", "httpx"), "httptools"),
                                   "upstream_client"),
        http_parser=_installed(_choice(server, "http_parser", ("httptools", "h11"), "httptools"), "http_parser"),
        event_loop=_installed(_choice(server, "event_loop", ("uvloop", "asyncio"), DEFAULT_EVENT_LOOP), "event_loop"),
        admin_host=_get(admin, "host", str, "admin.", "127.0.0.1"),
        admin_port=_get(admin, "port", int, "admin.", 9090),
        body_timeout_s=_seconds(server, "body_timeout_s", 60.0),
        max_client_connections=_positive(server, "max_client_connections", 1024),
        prices=prices,
        host=host_config,
        keys=tuple(keys),
        upstreams=tuple(upstreams),
        slots=slots,
    )
    return config


def replace(config: ProxyConfig, **changes: Any) -> ProxyConfig:
    """A copy with some fields changed (tests and tools)."""
    return dataclasses.replace(config, **changes)
