"""docker-compose.yml read once, and what the compose tests ask of it: a service's
environment and settings, what it waits for, the stores it hands to fold tasks. Used by
tests/test_compose.py, tests/test_compose_credentials.py and tests/test_deploy_scripts.py."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# An interpolated variable: ${NAME}, ${NAME:-default}, ${NAME:?message}.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")


def environment_of(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (compose accepts a mapping or KEY=VALUE lines)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(line.split("=", 1) for line in environment)
    return {key: str(value) for key, value in environment.items()}


def settings_of(name: str, monkeypatch) -> Settings:
    """The settings a crossfold service reads from its compose environment, interpolations
    filled with placeholders: the values must be valid, not only the names."""
    for variable in os.environ:
        if variable.startswith(("CROSSFOLD_", "AWS_")):
            monkeypatch.delenv(variable)
    for key, value in environment_of(SERVICES[name]).items():
        monkeypatch.setenv(key, INTERPOLATION.sub("placeholder", value))
    return Settings()


def dependencies_of(service: dict) -> dict[str, str]:
    """depends_on as {service: condition} (compose accepts a list or a mapping)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {target: (how or {}).get("condition", "service_started") for target, how in depends_on.items()}


def waits_for(name: str) -> set[str]:
    """Every service `name` starts after, directly or through others."""
    direct = set(dependencies_of(SERVICES[name]))
    return direct.union(*(waits_for(other) for other in direct))


def store_uris(monkeypatch) -> list[str]:
    settings = settings_of("dispatcher", monkeypatch)  # the URIs it hands to fold tasks
    return [settings.resolved_dataset_store(), settings.resolved_checkpoint_store()]
