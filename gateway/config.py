"""Settings: one frozen Struct read from gateway.toml and GATEWAY_* environment variables.

This is the only module that reads `os.environ`. Engine secrets are resolved here from the
variable each engine names (`api_key_env`) and carried as `Secret`, whose repr hides the value.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

# ConfigError, Secret and StorageConfig live apart (storage builds itself from its own table) and
# are re-exported: `gateway.config` is where callers find every settings type.
from gateway.config_types import ConfigError as ConfigError  # noqa: PLC0414
from gateway.config_types import PositiveFloat, PositiveInt, check_url, env_secret
from gateway.config_types import Secret as Secret  # noqa: PLC0414
from gateway.domain.generation import Operation
from gateway.storage.config import STORAGE_SECRETS, check_storage, resolve_storage_secrets
from gateway.storage.config import StorageConfig as StorageConfig  # noqa: PLC0414

EngineKind = Literal["api2convert", "qolaba", "aithriving", "diffusion"]
# Kinds that call a vendor's API: a base_url and an API key are required.
VENDOR_KINDS = frozenset({"api2convert", "qolaba", "aithriving"})

TransportKind = Literal["own", "aiohttp", "httpx"]


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[engines.NAME]` in gateway.toml."""

    kind: EngineKind
    # Required for vendors. For kind = "diffusion": a `gateway gpu-worker`'s address, or empty
    # for the in-process GPU service (the one the no-engines default uses).
    base_url: str = ""
    api_key_env: str | None = None
    timeout_s: PositiveFloat = 120.0  # whole-job budget for one attempt on this engine
    connect_timeout_s: PositiveFloat = 5.0
    request_timeout_s: PositiveFloat = 30.0  # one HTTP exchange
    poll_interval_s: PositiveFloat = 1.0  # first poll delay; grows with backoff
    max_poll_interval_s: PositiveFloat = 10.0
    max_concurrency: PositiveInt = 16
    weight: PositiveInt = 1
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    # What this engine's reported spend costs the operator, in our credits, for margin reports
    # (/v1/admin/usage): per vendor credit it reports spending, and per GPU second.
    cost_per_vendor_credit: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    cost_per_gpu_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Send W3C traceparent (our trace ids) to this engine: off for vendors, whose traces we do not share.
    # Our own GPU service (kind "diffusion") always gets it.
    propagate_trace: bool = False
    # The HTTP/1.1 transport under httpx: "own" (gateway/engines/transport.py), "aiohttp" (httpx-aiohttp),
    # or "httpx" (httpx's default, httpcore); gateway/engines/registry.py `engine_transport` says why "own".
    transport: TransportKind = "own"
    # Resolved from the environment variable `api_key_env` by the loader, never from the file.
    api_key: Secret | None = None


class RoutingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[routing]`: fallback and breaker tuning shared by all engines."""

    max_attempts: PositiveInt = 4
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 0.05
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    breaker_consecutive_failures: PositiveInt = 5
    breaker_error_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    breaker_window: PositiveInt = 20
    breaker_open_s: PositiveFloat = 30.0


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def parse_resolution(text: str) -> tuple[int, int]:
    """ "768x512" -> (768, 512): width by height, each a multiple of 8 from 64 to 2048."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 512x512")
    size = (int(width), int(height))
    if any(side % 8 or not 64 <= side <= 2048 for side in size):
        raise ValueError(f"{text!r}: each side must be a multiple of 8 from 64 to 2048")
    return size


class GpuConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[gpu]`: the diffusion service (in-process by default, or `gateway gpu-worker`).

    With `compile`, the UNet and the VAE decoder are compiled for the declared shapes only: every
    resolution in `resolutions` (empty: the model's native size) at every size in `batch_sizes`,
    with and/or without classifier-free guidance (`compile_guidance`). All of them are compiled and run once before
    `/v1/health` answers 200; a batch is padded up to the next declared size, and any other shape
    runs eager (logged once per shape) instead of compiling while a request waits.
    """

    model_path: str | None = None  # a local diffusers folder; None: the demo model in the data dir
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    compile: bool = False
    compile_mode: CompileMode = "max-autotune"
    # "inductor" generates kernels; "eager" and "aot_eager" only trace (debugging, CPU tests).
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    # Inductor's and Triton's caches: a restart with the same shapes then compiles in a fraction
    # of the time. Empty: <data dir>/compile-cache (filled in by the settings loader).
    compile_cache_dir: str | None = None
    resolutions: tuple[str, ...] = ()  # "WxH" compiled and warmed at startup
    batch_sizes: tuple[PositiveInt, ...] = (1, 2, 4, 8)  # compiled batch sizes (images, before CFG doubling)
    # Guidance > 1 doubles the UNet batch. A deployment whose requests always use guidance can
    # warm "with" only and start faster; an undeclared request shape still works, eager.
    compile_guidance: Literal["both", "with", "without"] = "both"
    max_batch: PositiveInt = 8
    batch_limits: dict[str, PositiveInt] = msgspec.field(default_factory=dict)  # "WxH" -> at most this many
    # Share of the device's memory this process may take (torch's caching allocator refuses more,
    # so an oversized batch is split instead of starving a neighbour). None: no cap.
    memory_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    batch_window_ms: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    host: str = "127.0.0.1"
    port: int = 8090
    secret_env: str | None = None
    shared_secret: Secret | None = None

    def __post_init__(self) -> None:
        for text in (*self.resolutions, *self.batch_limits):
            parse_resolution(text)  # a ValueError here becomes a ValidationError naming [gpu]

    def batch_limit(self, width: int, height: int) -> int:
        """The most images one batch of this size may hold (before any padding)."""
        limit = self.max_batch
        for text, value in self.batch_limits.items():
            if parse_resolution(text) == (width, height):
                limit = min(limit, value)
        return limit


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[webhooks]`: outbox delivery. Attempt k waits about base * multiplier**(k-1), capped, with jitter;
    after `max_attempts` failed attempts the message is marked dead (7.5 to 15 hours with the defaults)."""

    timeout_s: PositiveFloat = 10.0  # one POST to the tenant's endpoint
    max_attempts: PositiveInt = 10
    backoff_base_s: PositiveFloat = 10.0
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 3.0
    backoff_max_s: PositiveFloat = 6 * 3600.0
    concurrency: PositiveInt = 8  # deliveries in flight per process
    poll_s: PositiveFloat = 5.0  # safety net; new messages wake the dispatcher by NOTIFY


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[logging]`: `format = "json"` (or GATEWAY_LOG_FORMAT=json) writes one JSON object a line with
    the request id, trace id, tenant, job and engine of each line (gateway/observability/logs.py)."""

    format: Literal["text", "json"] = "text"


class RetentionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[retention]`: what the sweeper deletes, and when (gateway/worker/retention.py).

    Output blobs go once their file expires (`file_ttl_s`), input blobs once their job has
    finished, idempotency keys after `idempotency_ttl_s`, dashboard sessions once expired. The
    ledger and the daily usage rollups are never deleted."""

    enabled: bool = True  # `gateway serve` (with its runner) and `gateway worker` sweep on a schedule
    interval_s: PositiveFloat = 300.0  # between sweeps of one process; replicas take turns, never overlap
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500  # rows per transaction
    blob_concurrency: PositiveInt = 16  # blob deletes in flight during a batch
    # Job rows, results, attempts, file rows and closed reservations, after this many days. At least
    # 32: a key's monthly cap sums this calendar month's reservations, which go with their jobs.
    jobs_days: Annotated[int, msgspec.Meta(ge=32)] = 90
    webhook_days: PositiveInt = 7  # delivered or dead webhook messages, after this many days


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of the service. Build it with `load_settings()`."""

    database_url: str | None = None  # None: start the embedded PostgreSQL in data_dir
    data_dir: str = ".gateway"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    db_pool_min: PositiveInt = 2
    db_pool_max: PositiveInt = 20
    # asyncpg's prepared-statement cache; 0 behind PgBouncer in transaction mode.
    db_statement_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 100
    run_worker: bool = True  # `gateway serve` also runs the job runner loop
    worker_concurrency: PositiveInt = 16
    lease_s: PositiveFloat = 30.0
    sync_wait_s: PositiveFloat = 60.0  # bounded wait of a sync request before it answers 202
    sse_keepalive_s: PositiveFloat = 15.0  # comment lines keep idle event streams open through proxies
    public_base_url: str | None = None  # how vendors reach our signed input URLs
    blob_signing_key: Secret | None = None
    file_ttl_s: PositiveInt = 24 * 3600
    idempotency_ttl_s: PositiveInt = 24 * 3600
    key_cache_ttl_s: PositiveFloat = 2.0
    dashboard_session_ttl_s: PositiveInt = 8 * 3600  # a dashboard sign-in lasts this long at most
    max_input_bytes: PositiveInt = 20 * 1024 * 1024
    max_input_pixels: PositiveInt = 4096 * 4096
    fetch_timeout_s: PositiveFloat = 10.0
    fetch_allow_hosts: list[str] = msgspec.field(default_factory=list)  # e.g. ["127.0.0.1"] in tests
    demo_tenant: bool = True  # the embedded default creates a demo tenant on first start
    engines: dict[str, EngineConfig] = msgspec.field(default_factory=dict)
    routes: dict[Operation, list[str]] = msgspec.field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()
    gpu: GpuConfig = GpuConfig()
    webhooks: WebhookConfig = WebhookConfig()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()

    @property
    def engine_unit_costs(self) -> dict[str, tuple[float, float]]:
        """Per engine: (credits per vendor credit, credits per GPU second), to price its cost of goods."""
        return {name: (e.cost_per_vendor_credit, e.cost_per_gpu_second) for name, e in self.engines.items()}

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


# Scalar settings that may come from GATEWAY_<NAME> environment variables.
_ENV_SCALARS = {
    name: field
    for name, field in zip(Settings.__struct_fields__, msgspec.structs.fields(Settings), strict=True)
    if name
    not in {
        "engines",
        "routes",
        "routing",
        "gpu",
        "webhooks",
        "storage",
        "logging",
        "fetch_allow_hosts",
        "blob_signing_key",
    }
}
# `[storage]` fields that may come from GATEWAY_STORAGE_<NAME> (a container sets the bucket per environment).
_ENV_STORAGE = frozenset(StorageConfig.__struct_fields__) - set(STORAGE_SECRETS)


# Read by `gateway generate`, a client of a running gateway; never settings of the service.
CLIENT_ENV = ("GATEWAY_URL", "GATEWAY_API_KEY")


def client_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client variables that are set: GATEWAY_URL (where the gateway is) and GATEWAY_API_KEY."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in CLIENT_ENV if env.get(name)}


def otel_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The standard OpenTelemetry variables (OTEL_*) that are set: they configure tracing
    (gateway/observability/tracing.py) as they do in every other service."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if name.startswith("OTEL_")}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("GATEWAY_") or key in {
            "GATEWAY_CONFIG",
            "GATEWAY_TEST_DATABASE_URL",
            "GATEWAY_BLOB_SIGNING_KEY",
            *CLIENT_ENV,
        }:
            continue
        name = key.removeprefix("GATEWAY_").lower()
        if name == "fetch_allow_hosts":
            out[name] = [h.strip() for h in value.split(",") if h.strip()]
        elif name in _ENV_SCALARS:
            out[name] = value
        elif name == "log_format":
            out["logging"] = {"format": value}
        elif name.startswith("storage_") and name.removeprefix("storage_") in _ENV_STORAGE:
            out.setdefault("storage", {})[name.removeprefix("storage_")] = value
        else:
            raise ConfigError(f"unknown environment variable {key}")
    return out


def _decode(raw: dict[str, Any], source: str) -> Settings:
    try:
        # strict=False lets environment strings become ints, floats and bools.
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _resolve_secrets(settings: Settings, environ: Mapping[str, str]) -> Settings:
    def secret(var: str | None, what: str, fix: str) -> Secret | None:
        return env_secret(environ, var, what, fix)

    engines = {
        name: msgspec.structs.replace(
            cfg, api_key=secret(cfg.api_key_env, f"engines.{name}.api_key_env", _key_fix(cfg))
        )
        for name, cfg in settings.engines.items()
    }
    gpu_fix = "export it with the secret the GPU worker and its diffusion engines share"
    gpu_secret = secret(settings.gpu.secret_env, "gpu.secret_env", gpu_fix)
    # Unset, the compile cache lives in the data folder, which survives restarts.
    cache = settings.gpu.compile_cache_dir or str(settings.data_path / "compile-cache")
    gpu = msgspec.structs.replace(settings.gpu, shared_secret=gpu_secret, compile_cache_dir=cache)
    storage = resolve_storage_secrets(settings.storage, environ)
    signing = environ.get("GATEWAY_BLOB_SIGNING_KEY")
    return msgspec.structs.replace(
        settings,
        engines=engines,
        gpu=gpu,
        storage=storage,
        blob_signing_key=Secret(signing) if signing else settings.blob_signing_key,
    )


def _key_fix(cfg: EngineConfig) -> str:
    if cfg.kind == "diffusion":
        return "export it with the GPU worker's shared secret (the value of the variable its gpu.secret_env names)"
    return f"export it with your {cfg.kind} API key"


def _check_engines(settings: Settings) -> None:
    """Engine tables that cannot work, refused before any secret is read."""
    for name, cfg in settings.engines.items():
        key = f"engines.{name}"
        if cfg.kind in VENDOR_KINDS:
            if not cfg.base_url:
                raise ConfigError(
                    f'{key}.base_url: required for kind = "{cfg.kind}"; set it to the vendor\'s API address'
                )
            if cfg.api_key_env is None:
                raise ConfigError(
                    f'{key}.api_key_env: required for kind = "{cfg.kind}"; name the environment variable '
                    "that holds the vendor's API key"
                )
        elif cfg.base_url and cfg.api_key_env is None:
            # gpu-worker refuses to start without a secret, so a remote one always wants it.
            raise ConfigError(
                f"{key}.api_key_env: a remote GPU worker (base_url set) needs its shared secret; name the "
                "environment variable holding the value the worker's gpu.secret_env names, or remove "
                "base_url to run the model in this process"
            )
        if cfg.base_url:
            check_url(cfg.base_url, f"{key}.base_url")


def _check_gpu_secrets(settings: Settings) -> None:
    """A diffusion engine pointed at this configuration's own GPU worker must hold its secret."""
    worker = settings.gpu
    if worker.shared_secret is None:
        return
    for name, cfg in settings.engines.items():
        if cfg.kind != "diffusion" or not cfg.base_url or cfg.api_key is None:
            continue
        if urlsplit(cfg.base_url).port != worker.port or cfg.api_key == worker.shared_secret:
            continue
        raise ConfigError(
            f"engines.{name}.api_key_env: {cfg.api_key_env} differs from gpu.secret_env ({worker.secret_env}), "
            f"so the GPU worker on port {worker.port} refuses this engine; give both variables the same value"
        )


def _check_routes(settings: Settings) -> None:
    for operation, names in settings.routes.items():
        for name in names:
            if name not in settings.engines:
                known = ", ".join(sorted(settings.engines)) or "none"
                raise ConfigError(
                    f"routes.{operation}: unknown engine {name!r}; add an [engines.{name}] table "
                    f"or remove it from the route (engines configured: {known})"
                )


def read_config_file(
    env: Mapping[str, str], config_path: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], str | os.PathLike[str] | None]:
    """The config file's table (empty without one) and its path: `config_path`, or GATEWAY_CONFIG."""
    path = config_path or env.get("GATEWAY_CONFIG")
    if path is None:
        return {}, None
    try:
        return tomllib.loads(Path(path).read_text()), path
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read gateway.toml (if any), then GATEWAY_* variables, then explicit overrides (CLI flags)."""
    env = os.environ if environ is None else environ
    raw, path = read_config_file(env, config_path)
    source = str(path) if path else "settings"
    for key in ("api_key", "shared_secret", "blob_signing_key"):
        if key in raw:
            raise ConfigError(f"{source}: {key} may only come from the environment")
    for key in STORAGE_SECRETS:
        if key in raw.get("storage", {}):
            raise ConfigError(f"{source}: storage.{key} may only come from the environment (storage.{key}_env)")
    env_values = _env_overrides(env)
    # GATEWAY_STORAGE_* refine the file's [storage] table instead of replacing it.
    if "storage" in env_values:
        env_values["storage"] = {**raw.get("storage", {}), **env_values["storage"]}
    raw.update(env_values)
    raw.update(overrides or {})
    decoded = _decode(raw, source)
    check_storage(decoded.storage)
    _check_engines(decoded)
    if decoded.public_base_url is not None:
        check_url(decoded.public_base_url, "public_base_url")
    settings = _resolve_secrets(decoded, env)
    _check_gpu_secrets(settings)
    _check_routes(settings)
    return settings
