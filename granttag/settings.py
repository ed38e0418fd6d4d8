"""Typed settings read from the environment (prefix GRANTTAG_), built by a function and passed in."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; every field can be set as GRANTTAG_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="GRANTTAG_", extra="ignore")

    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    result_backend: str = Field("redis://127.0.0.1:6379/0", description="Celery result backend")
    models_dir: Path | None = Field(None, description="Model store; default models/ in a checkout, else XDG data dir")
    data_dir: Path | None = Field(None, description="Where jobs, feedback and added training data are kept")


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
