"""`stateroom.toml`: the app's configuration (the analogue of `wrangler.toml`).

Parsed and validated here, shared by the client (to build a deployment) and the
supervisor (to check one). A config is plain data:

    {"name": str, "main": str, "bindings": {binding: class_name},
     "migrations": [{"tag": str, "new_classes": [...], "renamed_classes":
     [{"from": A, "to": B}], "deleted_classes": [...]}], "vars": {...}}

`new_sqlite_classes` is folded into `new_classes` (they are synonyms here).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "load_config", "normalize_config"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """A `stateroom.toml` (or deploy keywords) that cannot be used; names the problem."""


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ConfigError(f"{what} must be a Python identifier, got {value!r}")
    return value


def normalize_migrations(migrations: Any) -> list[dict[str, Any]]:
    if migrations is None:
        return []
    if not isinstance(migrations, list):
        raise ConfigError("migrations must be a list of tables")
    out = []
    seen = set()
    for i, m in enumerate(migrations):
        if not isinstance(m, dict):
            raise ConfigError(f"migration #{i + 1} must be a table")
        tag = m.get("tag")
        if not isinstance(tag, str) or not tag:
            raise ConfigError(f"migration #{i + 1} needs a non-empty string 'tag'")
        if tag in seen:
            raise ConfigError(f"migration tag {tag!r} appears twice")
        seen.add(tag)
        unknown = set(m) - {
            "tag",
            "new_classes",
            "new_sqlite_classes",
            "renamed_classes",
            "deleted_classes",
        }
        if unknown:
            raise ConfigError(f"migration {tag!r}: unknown keys {sorted(unknown)}")
        new = [
            _ident(c, f"migration {tag!r}: class name")
            for c in list(m.get("new_classes", [])) + list(m.get("new_sqlite_classes", []))
        ]
        renamed = []
        for r in m.get("renamed_classes", []) or []:
            if not isinstance(r, dict) or set(r) != {"from", "to"}:
                raise ConfigError(
                    f"migration {tag!r}: renamed_classes entries are {{from = 'A', to = 'B'}}"
                )
            renamed.append(
                {
                    "from": _ident(r["from"], f"migration {tag!r}: class name"),
                    "to": _ident(r["to"], f"migration {tag!r}: class name"),
                }
            )
        deleted = [
            _ident(c, f"migration {tag!r}: class name") for c in m.get("deleted_classes", []) or []
        ]
        out.append(
            {"tag": tag, "new_classes": new, "renamed_classes": renamed, "deleted_classes": deleted}
        )
    return out


def normalize_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a config dict (TOML shape or deploy keywords) into the plain form above."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a table")
    bindings: dict[str, str] = {}
    if "bindings" in raw and isinstance(raw["bindings"], dict):
        for b, c in raw["bindings"].items():
            bindings[_ident(b, "binding name")] = _ident(c, f"binding {b!r}: class_name")
    durable = raw.get("durable_objects", {}) or {}
    if not isinstance(durable, dict):
        raise ConfigError("durable_objects must be a table")
    for entry in durable.get("bindings", []) or []:
        if not isinstance(entry, dict) or "name" not in entry or "class_name" not in entry:
            raise ConfigError("each [[durable_objects.bindings]] needs name and class_name")
        name = _ident(entry["name"], "binding name")
        if name in bindings:
            raise ConfigError(f"binding {name!r} is declared twice")
        bindings[name] = _ident(entry["class_name"], f"binding {name!r}: class_name")
    vars_ = raw.get("vars", {}) or {}
    if not isinstance(vars_, dict):
        raise ConfigError("vars must be a table")
    for k in vars_:
        _ident(k, "var name")
        if k in bindings:
            raise ConfigError(f"{k!r} is both a binding and a var")
    return {
        "name": str(raw.get("name", "app")),
        "main": str(raw.get("main", "app.py")),
        "bindings": bindings,
        "migrations": normalize_migrations(raw.get("migrations")),
        "vars": dict(vars_),
    }


def load_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read and validate `stateroom.toml`; returns (config, folder of the file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "stateroom.toml"
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return normalize_config(raw), p.resolve().parent
