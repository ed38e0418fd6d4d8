"""`granttag serve`: run the HTTP API under uvicorn (issue 5).

Only click is imported here; FastAPI and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click


@click.command()
@click.option("--host", default=None, help="Address to listen on (default GRANTTAG_API_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default GRANTTAG_API_PORT or 8000).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="uvicorn worker processes (default GRANTTAG_API_WORKERS or 1).")
@click.option("--no-auth", is_flag=True, help="Serve without API keys: every caller is admin. For local use only.")
@click.option("--no-queue", is_flag=True, help="No Celery/Redis: jobs are refused and /readyz does not ask Redis.")
@click.option(
    "--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", help="uvicorn log level."
)
@click.option(
    "--keep-alive",
    type=click.IntRange(1),
    default=75,
    show_default=True,
    help="Seconds an idle connection is kept open; longer than a proxy's idle timeout, so no request meets a closing connection.",
)
def serve(host: str | None, port: int | None, workers: int | None, no_auth: bool, no_queue: bool, log_level: str, keep_alive: int) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json, docs at /docs).

    Keys come from GRANTTAG_API_KEYS ("KEY1:admin,KEY2:classify") or
    GRANTTAG_API_KEY_FILE; without keys the server refuses to start unless
    --no-auth is given.
    """
    from classifier.errors import GranttagError

    # The settings travel to uvicorn's worker processes through the environment.
    if no_auth:
        os.environ["GRANTTAG_API_NO_AUTH"] = "1"
    if no_queue:
        os.environ["GRANTTAG_API_QUEUE_MODE"] = "0"
    try:
        from granttag.api import check_settings
        from granttag.settings import get_settings

        settings = get_settings()
        check_settings(settings)
    except GranttagError as exc:
        click.echo(f"granttag: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # pydantic's ValidationError for a malformed GRANTTAG_ variable
        click.echo(f"granttag: bad settings: {exc}", err=True)
        sys.exit(2)
    if settings.api_no_auth:
        click.echo("granttag: WARNING: serving without authentication (--no-auth); every caller has the admin role", err=True)
    import uvicorn

    workers = workers or settings.api_workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # Several processes: each writes its metrics to this folder and /metrics adds them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="granttag-metrics-")
    options: dict[str, Any] = {
        "factory": True,
        "log_level": log_level,
        # uvicorn's default of 5 s lets a client send on a connection the server is closing (seen as errors under load).
        "timeout_keep_alive": keep_alive,
    }
    host, port = host or settings.api_host, port or settings.api_port
    from granttag.serving import reuse_port_supported, serve_reuse_port

    if workers > 1 and reuse_port_supported():
        # One listener per worker, so the kernel spreads connections over them (granttag/serving.py).
        try:
            serve_reuse_port("granttag.api:app_from_env", host, port, workers, **options)
        except OSError as exc:
            click.echo(f"granttag: cannot listen on {host}:{port}: {exc}", err=True)
            sys.exit(2)
        return
    uvicorn.run("granttag.api:app_from_env", host=host, port=port, workers=workers, **options)


def register(main: click.Group) -> None:
    """Add the serve command to the granttag command group."""
    main.add_command(serve)
