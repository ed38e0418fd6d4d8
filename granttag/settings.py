"""Typed settings read from the environment (prefix GRANTTAG_), built by a function and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; every field can be set as GRANTTAG_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="GRANTTAG_", extra="ignore")

    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    result_backend: str = Field("redis://127.0.0.1:6379/0", description="Celery result backend")
    models_dir: Path | None = Field(None, description="Model store; default models/ in a checkout, else XDG data dir")
    data_dir: Path | None = Field(None, description="Where jobs, feedback and added training data are kept")

    # HTTP API (issue 5): keys, limits and server options; `granttag serve` flags override the server ones.
    api_keys: str | None = Field(None, description='API keys with roles, "KEY1:admin,KEY2:classify"; no default key')
    api_key_file: Path | None = Field(None, description="File of API keys, one KEY:ROLE a line (# comments)")
    api_no_auth: bool = Field(False, description="Serve without keys (local use only; set by `granttag serve --no-auth`)")
    api_host: str = Field("127.0.0.1", description="Address `granttag serve` listens on")
    api_port: int = Field(8000, ge=1, le=65535, description="Port `granttag serve` listens on")
    api_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    api_max_body_bytes: int = Field(2_000_000, ge=1024, description="Largest JSON request body (413 above)")
    api_max_upload_bytes: int = Field(200_000_000, ge=1024, description="Largest file uploaded to POST /v1/jobs (413 above)")
    api_max_text_chars: int = Field(50_000, ge=100, description="Longest title, abstract, text, keywords, program or field (422 above)")
    api_max_batch: int = Field(100, ge=1, le=10_000, description="Most documents in one POST /v1/classify/batch (422 above)")
    api_queue_mode: bool = Field(True, description="Jobs through Celery; /readyz then also needs Redis to answer")
    api_model_check_seconds: float = Field(2.0, ge=0, description="How often the API looks for a newly activated model")
    api_job_sources: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Server-side job sources by name (JSON), e.g. {"kaken": {"url": "postgresql://...", "table": "projects"}}; admin keys start jobs on them',
    )

    # Celery workers and batch tagging (issue 4).
    chunk_size: int = Field(500, ge=1, le=20_000, description="Records per tagging task")
    worker_concurrency: int | None = Field(None, ge=1, description="Processes per `granttag worker` (default: cores)")
    task_soft_time_limit: int = Field(240, ge=1, description="Seconds a chunk may run before SoftTimeLimitExceeded")
    task_time_limit: int = Field(300, ge=1, description="Seconds before a chunk's process is killed")
    visibility_timeout: int = Field(900, ge=1, description="Seconds before Redis redelivers a chunk whose worker died")
    job_ttl_days: int = Field(7, ge=1, description="Days a finished job's state is kept in Redis")

    # Retraining and its quality gate (issue 6).
    retrain_margin: float = Field(0.05, ge=0, le=1, description="Largest F1 drop on the holdout a label with enough support may have")
    retrain_min_support: int = Field(5, ge=0, description="Holdout examples a label needs for its own F1 to be checked")
    retrain_cv_folds: int = Field(3, ge=0, le=10, description="Cross-validation folds of a retrain (0: none)")
    retrain_time_limit: int = Field(3600, ge=60, description="Seconds a retrain task may run before it is stopped")
    retrain_calibration_cv: int = Field(5, ge=2, le=10, description="Folds for calibration and threshold tuning of each label (fewer: faster on big data)")
    retrain_min_df: int = Field(1, ge=1, description="Documents a term needs to become a feature (more: smaller, faster on big data)")


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``overrides``); raise on bad values."""
    return Settings(**overrides)  # type: ignore[arg-type]


def data_dir(settings: Settings) -> Path:
    """Return the data directory (created if missing): GRANTTAG_DATA_DIR or $XDG_DATA_HOME/granttag."""
    import os

    if settings.data_dir is not None:
        path = settings.data_dir
    else:
        home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(home) / "granttag"
    path.mkdir(parents=True, exist_ok=True)
    return path
