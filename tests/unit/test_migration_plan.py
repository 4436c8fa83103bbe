"""Migration planning and application against a real runtime database, no processes."""

from __future__ import annotations

import pytest

from stateroom._config import normalize_config
from stateroom.supervisor.deployments import (
    DeployRefused,
    apply_plan,
    plan_migrations,
    tentative_namespaces,
)
from stateroom.supervisor.runtime_db import RuntimeDB


def config(bindings: dict[str, str], *migrations: dict) -> dict:
    return normalize_config({"bindings": bindings, "migrations": list(migrations)})


def deploy(db: RuntimeDB, tmp_path, cfg: dict, classes: list[str], version: int) -> dict:
    plan = plan_migrations(db, tmp_path, cfg, classes)
    with db.transaction():
        apply_plan(db, tmp_path, plan, version)
    return plan


@pytest.fixture
def db(tmp_path):
    db = RuntimeDB(tmp_path / "runtime.sqlite")
    yield db
    db.close()


V1 = {"tag": "v1", "new_classes": ["A"]}


def test_steps_apply_in_migration_order(db, tmp_path):
    deploy(db, tmp_path, config({"X": "A"}, V1), ["A"], 1)
    key_a, secret_a = db.namespaces()["A"]
    cfg = config(
        {"X": "A", "Y": "C"},
        V1,
        {"tag": "v2", "renamed_classes": [{"from": "A", "to": "B"}], "new_classes": []},
        {"tag": "v3", "new_classes": ["A", "Draft"]},
        {"tag": "v4", "renamed_classes": [{"from": "Draft", "to": "C"}], "deleted_classes": ["B"]},
    )
    plan = deploy(db, tmp_path, cfg, ["A", "C"], 2)
    assert plan["apply"] == ["v2", "v3", "v4"]
    assert plan["steps"] == [
        ["rename", "A", "B"],
        ["create", "A"],
        ["create", "Draft"],
        ["rename", "Draft", "C"],
        ["delete", "B"],
    ]
    live = db.namespaces()
    assert sorted(live) == ["A", "C"]
    assert live["A"][0] != key_a and live["A"][1] != secret_a, (
        "a re-created name gets a new namespace"
    )
    assert db.applied_tags() == {"v1", "v2", "v3", "v4"}


def test_tentative_namespaces_follow_the_steps(db, tmp_path):
    deploy(db, tmp_path, config({"X": "A"}, V1), ["A"], 1)
    key_a = db.namespaces()["A"][0]
    cfg = config(
        {"X": "B"},
        V1,
        {"tag": "v2", "renamed_classes": [{"from": "A", "to": "B"}]},
        {"tag": "v3", "new_classes": ["A"]},
    )
    plan = plan_migrations(db, tmp_path, cfg, ["A", "B"])
    tentative = tentative_namespaces(db, plan)
    assert tentative["B"][0] == key_a
    assert tentative["A"][0] < 0


def test_applied_tags_are_skipped(db, tmp_path):
    deploy(db, tmp_path, config({"X": "A"}, V1), ["A"], 1)
    plan = plan_migrations(db, tmp_path, config({"X": "A"}, V1), ["A"])
    assert plan["apply"] == [] and plan["steps"] == []


@pytest.mark.parametrize(
    ("bindings", "migrations", "classes", "message"),
    [
        ({"X": "Ghost"}, [V1], ["A", "Ghost"], "'Ghost' was not created by any migration"),
        (
            {"X": "A"},
            [V1, {"tag": "v2", "deleted_classes": ["A"]}],
            ["A"],
            "'A' is deleted by migration 'v2'",
        ),
        ({"X": "A"}, [V1], [], "'A' is not defined in the module"),
        ({}, [V1, {"tag": "v2", "new_classes": ["A"]}], ["A"], "class 'A' already exists"),
        (
            {},
            [V1, {"tag": "v2", "deleted_classes": ["Q"]}],
            ["A"],
            "cannot delete unknown class 'Q'",
        ),
    ],
)
def test_refusals_name_the_class_and_change_nothing(
    db, tmp_path, bindings, migrations, classes, message
):
    deploy(db, tmp_path, config({"X": "A"}, V1), ["A"], 1)
    before = (db.namespaces(), db.applied_tags())
    with pytest.raises(DeployRefused, match=message):
        plan_migrations(db, tmp_path, config(bindings, *migrations), classes)
    assert (db.namespaces(), db.applied_tags()) == before


def test_dropping_a_class_with_data_is_refused_but_without_data_allowed(db, tmp_path):
    deploy(db, tmp_path, config({"X": "A"}, V1), ["A"], 1)
    key = db.namespaces()["A"][0]
    plan_migrations(db, tmp_path, config({}, V1), [])  # no data: may simply disappear
    folder = tmp_path / "objects" / str(key)
    folder.mkdir(parents=True)
    (folder / ("0" * 64 + ".sqlite")).write_bytes(b"x")
    with pytest.raises(DeployRefused, match="class 'A' still has data"):
        plan_migrations(db, tmp_path, config({}, V1), [])
    renamed = config({}, V1, {"tag": "v2", "renamed_classes": [{"from": "A", "to": "B"}]})
    with pytest.raises(DeployRefused, match="class 'B' still has data"):
        plan_migrations(db, tmp_path, renamed, [])
