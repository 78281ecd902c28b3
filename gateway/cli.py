"""The `gateway` command (shared/DESIGN.md section 7)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, Settings, load_settings
from gateway.domain.generation import IMAGE_FORMATS
from gateway.errors import GatewayError


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    extra = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(overrides=extra)


def _startup_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings for a process that serves: every check that can fail at start-up, before it starts,
    so a bad route is a one-line `configuration error` rather than a traceback from the lifespan."""
    from gateway.engines.registry import check_route_capabilities  # noqa: PLC0415

    settings = _settings(args, **overrides)
    check_route_capabilities(settings)
    return settings


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import run_server  # noqa: PLC0415

    # The flags reach every process through the environment: with --workers, each worker process
    # builds its own app from it (uvicorn spawns them and imports `serve_app`).
    for name, value in (("GATEWAY_HOST", args.host), ("GATEWAY_PORT", args.port)):
        if value is not None:
            os.environ[name] = str(value)
    run_server(_startup_settings(args), args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from gateway.serving import run_worker  # noqa: PLC0415

    run_worker(_startup_settings(args, run_worker=True))
    return 0


def cmd_gpu_worker(args: argparse.Namespace) -> int:
    from gateway.gpu.server import run_gpu_worker  # noqa: PLC0415

    return run_gpu_worker(_settings(args))


def cmd_make_demo_model(args: argparse.Namespace) -> int:
    from gateway.gpu.demo_model import main_make_demo_model  # noqa: PLC0415

    return main_make_demo_model(args.dir)


async def _with_pool(settings: Settings, fn: Any) -> Any:
    from gateway.db.embedded import start_embedded  # noqa: PLC0415
    from gateway.db.migrations import apply_migrations  # noqa: PLC0415
    from gateway.db.pool import create_pool  # noqa: PLC0415

    embedded = None
    dsn = settings.database_url
    if not dsn:
        embedded = await asyncio.to_thread(start_embedded, settings.data_path)
        dsn = embedded.uri
    try:
        pool = await create_pool(dsn, min_size=1, max_size=2, statement_cache_size=settings.db_statement_cache_size)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            return await fn(pool)
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def cmd_migrate(args: argparse.Namespace) -> int:
    async def noop(pool: Any) -> None:
        return None

    asyncio.run(_with_pool(_settings(args), noop))
    print("migrations applied")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import main as doctor  # noqa: PLC0415

    return doctor(args.json)


def cmd_openapi(args: argparse.Namespace) -> int:
    from gateway.app import create_app  # noqa: PLC0415
    from gateway.openapi import encode_document, openapi_document  # noqa: PLC0415

    data = encode_document(openapi_document(create_app(load_settings({}))))
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from gateway.auth.commands import create_tenant_cmd  # noqa: PLC0415

    result = asyncio.run(_with_pool(_settings(args), lambda pool: create_tenant_cmd(pool, args.name, args.credits)))
    _print(result, args.json)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from gateway.auth.commands import create_key_cmd  # noqa: PLC0415

    scopes = [s.strip() for s in args.scopes.split(",")] if args.scopes else None
    result = asyncio.run(_with_pool(_settings(args), lambda pool: create_key_cmd(pool, args.tenant, scopes)))
    _print(result, args.json)
    return 0


def cmd_admin_keys_create(args: argparse.Namespace) -> int:
    from gateway.auth.commands import create_admin_key_cmd  # noqa: PLC0415

    result = asyncio.run(_with_pool(_settings(args), create_admin_key_cmd))
    _print(result, args.json)
    return 0


def cmd_admin_keys_list(args: argparse.Namespace) -> int:
    from gateway.auth.commands import list_admin_keys_cmd  # noqa: PLC0415

    rows = asyncio.run(_with_pool(_settings(args), list_admin_keys_cmd))
    if args.json:
        print(json.dumps(rows, default=str))
    for row in [] if args.json else rows:
        state = "revoked" if row["revoked_at"] else "active"
        print(f"{row['id']}  {state:7}  ...{row['hint']}  {row['name']}")
    return 0


def cmd_admin_keys_revoke(args: argparse.Namespace) -> int:
    from gateway.auth.commands import revoke_admin_key_cmd  # noqa: PLC0415

    result = asyncio.run(_with_pool(_settings(args), lambda pool: revoke_admin_key_cmd(pool, args.key_id)))
    _print(result, args.json)
    return 0


def cmd_billing_audit(args: argparse.Namespace) -> int:
    from gateway.db.audit import CHECKS, run_audit  # noqa: PLC0415

    async def audit(pool: Any) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await run_audit(conn)

    problems = asyncio.run(_with_pool(_settings(args), audit))
    for name in CHECKS:
        rows = problems.get(name)
        print(f"{'FAIL' if rows else 'ok  '}  {name}")
        for row in rows or []:
            print(f"        {row}")
    return 1 if problems else 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    from gateway.bootstrap import build_blob_store  # noqa: PLC0415
    from gateway.worker.retention import RetentionSweeper  # noqa: PLC0415

    settings = _settings(args)

    async def run(pool: Any) -> dict[str, Any]:
        blobs = build_blob_store(settings)
        try:
            sweeper = RetentionSweeper(pool=pool, blobs=blobs, settings=settings)
            report = await (sweeper.dry_run() if args.dry_run else sweeper.sweep())
        finally:
            await blobs.aclose()
        return {name: getattr(report, name) for name in report.__struct_fields__}

    result = asyncio.run(_with_pool(settings, run))
    if not args.json and result["dry_run"]:
        print("dry run: nothing deleted; a sweep now would delete")
    _print(result, args.json)
    return 1 if result["blob_errors"] else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from gateway.client import ClientError, GenerateOptions, generate  # noqa: PLC0415
    from gateway.config import client_env  # noqa: PLC0415

    env = client_env()
    url = args.url or env.get("GATEWAY_URL") or "http://127.0.0.1:8000"
    key = args.key or env.get("GATEWAY_API_KEY")
    if not key:
        print("error: no API key: pass --key or set GATEWAY_API_KEY", file=sys.stderr)
        return 2
    if args.op != "text-to-image" and args.image is None:
        print(f"error: {args.op} needs --image", file=sys.stderr)
        return 2
    if args.op == "inpaint" and args.mask is None:
        print("error: inpaint needs --mask", file=sys.stderr)
        return 2
    names = ("n", "width", "height", "steps", "seed", "strength", "aspect_ratio", "output_format", "negative_prompt")
    fields = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    options = GenerateOptions(
        prompt=args.prompt,
        out=Path(args.out),
        operation=args.op,
        image=Path(args.image) if args.image else None,
        mask=Path(args.mask) if args.mask else None,
        fields=fields,
        download_password=args.password,
        timeout_s=args.timeout,
    )
    try:
        written = generate(url, key, options)
    except (ClientError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


GPU_WORKER_EPILOG = """\
settings that matter (the [gpu] table of gateway.toml):
  gpu.host, gpu.port      where it listens (default 127.0.0.1:8090)
  gpu.secret_env          REQUIRED: the name of the variable holding the shared secret; the
                          gateway's diffusion engine must hold the same value in the variable
                          its engines.NAME.api_key_env names, with base_url = http://HOST:PORT
  gpu.model_path          a diffusers folder (default: the demo model in the data folder)
  gpu.device, gpu.dtype   auto, cpu, cuda / auto, float32, float16, bfloat16
  gpu.max_batch, gpu.batch_window_ms   batching of concurrent requests

Only needed on a separate GPU machine: an engine of kind "diffusion" without base_url runs the
same service inside `gateway serve`.
"""


def _command(sub: Any, name: str, help: str, fn: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command whose one-line `help` shows in its parent's --help and heads its own."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kwargs)
    parser.set_defaults(fn=fn)
    return parser


def _group(sub: Any, name: str, help: str) -> Any:
    """A command with sub-commands of its own (`gateway tenants create`)."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Image-generation API gateway. Settings: gateway.toml ($GATEWAY_CONFIG) and GATEWAY_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(sub, "serve", "HTTP API and in-process job runner", cmd_serve)
    serve.add_argument("--host", help="listen address (default: the host setting, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: the port setting, 8000)")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="processes serving the one socket (default 1; about one per core)"
    )
    _command(sub, "worker", "job runner only (no HTTP API)", cmd_worker)
    _command(
        sub,
        "gpu-worker",
        "GPU diffusion service only, for a separate GPU machine (needs gpu.secret_env)",
        cmd_gpu_worker,
        epilog=GPU_WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _command(sub, "migrate", "apply database migrations and exit", cmd_migrate)
    doctor = _command(
        sub, "doctor", "check configuration, database, blob store, engines and routes; exit 1 on a failure", cmd_doctor
    )
    _json_flag(doctor)
    openapi = _command(sub, "openapi", "write the OpenAPI document", cmd_openapi)
    openapi.add_argument("--out", help="file to write (default: standard output)")

    tenants = _group(sub, "tenants", "manage tenants")
    tcreate = _command(tenants, "create", "new tenant, wallet topped up, first key printed once", cmd_tenants_create)
    tcreate.add_argument("name", help="the tenant's display name")
    tcreate.add_argument("--credits", type=float, default=0.0, help="credits to top the wallet up with (default 0)")
    _json_flag(tcreate)

    keys = _group(sub, "keys", "manage tenant API keys")
    kcreate = _command(keys, "create", "a tenant key, printed once", cmd_keys_create)
    kcreate.add_argument("--tenant", required=True, help="the tenant's id")
    kcreate.add_argument("--scopes", help="comma-separated scopes (default: all)")
    _json_flag(kcreate)

    admin_keys = _group(sub, "admin-keys", "manage operator keys (for /v1/admin and the operator dashboard)")
    _json_flag(_command(admin_keys, "create", "an operator key, printed once", cmd_admin_keys_create))
    _json_flag(_command(admin_keys, "list", "operator keys, never their secrets", cmd_admin_keys_list))
    arevoke = _command(admin_keys, "revoke", "revoke an operator key (not the last active one)", cmd_admin_keys_revoke)
    arevoke.add_argument("key_id", help="the key's id, as `admin-keys list` shows it")
    _json_flag(arevoke)

    billing = _group(sub, "billing", "billing checks")
    _command(billing, "audit", "check every ledger invariant; exit 0 only if all hold", cmd_billing_audit)

    retention = _group(sub, "retention", "data retention")
    rrun = _command(
        retention,
        "run",
        "one retention sweep: expired blobs, finished inputs, old jobs, idempotency keys, sessions",
        cmd_retention_run,
    )
    rrun.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    _json_flag(rrun)

    gen = _command(
        sub, "generate", "submit a job to a running gateway, show its progress, save the image(s)", cmd_generate
    )
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument(
        "--op", choices=["text-to-image", "image-to-image", "inpaint"], default="text-to-image", help="the operation"
    )
    gen.add_argument("--out", default="image.png", help="where to save; with --n > 1, NAME-0.EXT, NAME-1.EXT, ...")
    gen.add_argument("--image", help="input image file (image-to-image, inpaint)")
    gen.add_argument("--mask", help="mask file, white = repaint (inpaint)")
    gen.add_argument("--url", help="the gateway's base URL (default: $GATEWAY_URL or http://127.0.0.1:8000)")
    gen.add_argument("--key", help="a tenant API key (default: $GATEWAY_API_KEY)")
    gen.add_argument("--n", type=int, help="number of images")
    gen.add_argument("--width", type=int, help="pixels")
    gen.add_argument("--height", type=int, help="pixels")
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--seed", type=int, help="seed of the first image")
    gen.add_argument("--strength", type=float, help="how far to move from the input image (0-1)")
    gen.add_argument("--aspect-ratio", dest="aspect_ratio", help="e.g. 16:9, instead of width and height")
    gen.add_argument(
        "--output-format", dest="output_format", choices=[f.name for f in IMAGE_FORMATS], help="re-encode the images"
    )
    gen.add_argument("--negative-prompt", dest="negative_prompt", help="what not to draw")
    gen.add_argument("--password", help="protect the outputs with this download password")
    gen.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job")

    gpu = _group(sub, "gpu", "GPU model tools")
    demo = _command(gpu, "make-demo-model", "build the small random-weight demo model offline", cmd_make_demo_model)
    demo.add_argument("dir", help="folder to write the diffusers model into")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        # Operator commands refuse bad input with the same errors the API returns; a terminal
        # wants the message and the field, not a traceback.
        fields = "".join(f"\n  {e.field}: {e.message}" for e in exc.errors or [] if e.field)
        print(f"error: {exc.detail or exc.title}{fields}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
