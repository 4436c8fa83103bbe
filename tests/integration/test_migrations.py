"""Migrations (SPEC §3): renames keep ids and data, deletes remove every object and its
files, refused deploys change nothing, each tag is applied once, `deploy --dry-run`."""

from __future__ import annotations

import pytest
import trio

import stateroom
from tests.conftest import run_cli
from tests.integration.appgen import write_app

V1 = [{"tag": "v1", "new_sqlite_classes": ["Counter"]}]
TWO = [{"tag": "v1", "new_sqlite_classes": ["Counter", "Other"]}]


def bundle_files(rt) -> list[str]:
    folder = rt.data / "deployments"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def object_files(rt, ns_key: int | None = None) -> list[str]:
    root = rt.data / "objects"
    if ns_key is not None:
        root = root / str(ns_key)
    return (
        sorted(str(p.relative_to(rt.data)) for p in root.rglob("*.sqlite")) if root.is_dir() else []
    )


async def namespace_classes(rt) -> dict[str, str]:
    return {n["binding"]: n["class"] for n in await rt.client.namespaces()}


@pytest.mark.stateroom(workers=2)
async def test_renamed_class_keeps_ids_and_data(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "a", classes=("Counter",), migrations=V1))
    names = [f"user-{i}" for i in range(8)]
    ids = {}
    for i, n in enumerate(names):
        stub = rt.namespace("COUNTER").get_by_name(n)
        ids[n] = str(stub.id)
        assert await stub.increment(i + 1) == i + 1
    files_before = object_files(rt)
    assert len(files_before) == len(names)

    # The objects are still in memory when the rename happens.
    result = await rt.deploy(
        write_app(
            tmp_path / "b",
            classes=("Tally",),
            bindings={"COUNTER": "Tally"},
            migrations=V1
            + [{"tag": "v2", "renamed_classes": [{"from": "Counter", "to": "Tally"}]}],
        )
    )
    assert result["applied"] == ["v2"]
    assert await namespace_classes(rt) == {"COUNTER": "Tally"}
    for i, n in enumerate(names):
        stub = rt.namespace("COUNTER").get_by_name(n)
        assert str(stub.id) == ids[n], f"{n}: id changed across the rename"
        assert await stub.class_name() == "Tally"
        assert await stub.get() == i + 1, f"{n}: data lost across the rename"
    assert object_files(rt) == files_before
    assert sorted(await rt.list_object_ids("COUNTER")) == sorted(ids.values())


@pytest.mark.stateroom(workers=2)
async def test_deleted_class_loses_every_object_and_file_and_a_recreated_class_starts_empty(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    both = {"COUNTER": "Counter", "OTHER": "Other"}
    await rt.deploy(
        write_app(tmp_path / "a", classes=("Counter", "Other"), bindings=both, migrations=TWO)
    )
    for i in range(6):
        await rt.namespace("OTHER").get_by_name(f"o{i}").increment(10)
        await rt.namespace("COUNTER").get_by_name(f"c{i}").increment(1)
    other_id = str(rt.namespace("OTHER").get_by_name("o0").id)
    counter_id = str(rt.namespace("COUNTER").get_by_name("c0").id)
    [other_file] = (rt.data / "objects").rglob(f"{other_id}.sqlite")
    [counter_file] = (rt.data / "objects").rglob(f"{counter_id}.sqlite")
    other_key, counter_key = int(other_file.parent.name), int(counter_file.parent.name)
    counter_files = object_files(rt, counter_key)
    assert len(object_files(rt, other_key)) == 6

    migrations = TWO + [{"tag": "v2", "deleted_classes": ["Other"]}]
    result = await rt.deploy(write_app(tmp_path / "b", classes=("Counter",), migrations=migrations))
    assert result["applied"] == ["v2"]
    assert not (rt.data / "objects" / str(other_key)).exists(), "deleted class's files remain"
    assert object_files(rt, counter_key) == counter_files
    assert await namespace_classes(rt) == {"COUNTER": "Counter"}
    with pytest.raises(stateroom.BindingNotFoundError):
        rt.namespace("OTHER")
    assert await rt.namespace("COUNTER").get_by_name("c0").get() == 1

    # A later migration may create the name again: a new, empty class.
    migrations += [{"tag": "v3", "new_classes": ["Other"]}]
    await rt.deploy(
        write_app(
            tmp_path / "c", classes=("Counter", "Other"), bindings=both, migrations=migrations
        )
    )
    again = rt.namespace("OTHER").get_by_name("o0")
    assert await again.get() == 0, "a re-created class must start empty"
    assert await rt.list_object_ids("OTHER") == []
    assert await again.increment(1) == 1


@pytest.mark.stateroom(workers=2)
async def test_refused_deploys_name_the_class_and_change_nothing(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    await rt.deploy(
        write_app(
            tmp_path / "a",
            version="v1",
            classes=("Counter", "Other"),
            bindings={"COUNTER": "Counter", "OTHER": "Other"},
            migrations=TWO,
        )
    )
    await rt.namespace("OTHER").get_by_name("keep").increment(5)
    await rt.namespace("COUNTER").get_by_name("keep").increment(2)
    before = (await rt.client.deployments(), bundle_files(rt), object_files(rt))

    refused = {
        # Drops a class holding data, without a migration.
        "'Other' still has data": write_app(tmp_path / "r1", classes=("Counter",), migrations=TWO),
        # Binds a class no migration created.
        "'Ghost' was not created by any migration": write_app(
            tmp_path / "r2",
            classes=("Counter", "Other", "Ghost"),
            bindings={"COUNTER": "Counter", "OTHER": "Other", "GHOST": "Ghost"},
            migrations=TWO,
        ),
        # Deletes a class the config still binds.
        "'Other' is deleted by migration 'v2'": write_app(
            tmp_path / "r3",
            classes=("Counter", "Other"),
            bindings={"COUNTER": "Counter", "OTHER": "Other"},
            migrations=TWO + [{"tag": "v2", "deleted_classes": ["Other"]}],
        ),
        # Binds a class the module does not define.
        "'Counter' is not defined in the module": write_app(
            tmp_path / "r4",
            classes=("Other",),
            bindings={"COUNTER": "Counter", "OTHER": "Other"},
            migrations=TWO,
        ),
        # A migration that does not fit the classes that exist.
        "cannot rename unknown class 'Nope'": write_app(
            tmp_path / "r5",
            classes=("Counter", "Other"),
            bindings={"COUNTER": "Counter", "OTHER": "Other"},
            migrations=TWO + [{"tag": "v2", "renamed_classes": [{"from": "Nope", "to": "Other2"}]}],
        ),
    }
    for message, config in refused.items():
        with pytest.raises(stateroom.DeployError, match=message):
            await rt.deploy(config)
        with pytest.raises(stateroom.DeployError, match=message):
            await rt.client.deploy(config, dry_run=True)
    after = (await rt.client.deployments(), bundle_files(rt), object_files(rt))
    assert after == before, "a refused deploy changed something"
    # The old code keeps serving, and the refused migration tag was never recorded.
    assert await rt.namespace("OTHER").get_by_name("keep").version() == "v1"
    assert await rt.namespace("COUNTER").get_by_name("keep").increment() == 3
    plan = await rt.client.deploy(
        write_app(
            tmp_path / "ok",
            classes=("Counter",),
            migrations=TWO + [{"tag": "v2", "deleted_classes": ["Other"]}],
        ),
        dry_run=True,
    )
    assert plan["plan"]["apply"] == ["v2"]


@pytest.mark.stateroom(workers=1)
async def test_each_migration_tag_is_applied_once_in_order(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    first = await rt.deploy(write_app(tmp_path / "a", classes=("Counter",), migrations=V1))
    assert first["applied"] == ["v1"]
    again = await rt.deploy(write_app(tmp_path / "a2", classes=("Counter",), migrations=V1))
    assert again["applied"] == []
    await rt.namespace("COUNTER").get_by_name("x").increment(4)

    # In one deploy: create a class, then rename it, then rename Counter: order matters.
    migrations = V1 + [
        {"tag": "v2", "new_classes": ["Draft"]},
        {
            "tag": "v3",
            "renamed_classes": [
                {"from": "Draft", "to": "Final"},
                {"from": "Counter", "to": "Tally"},
            ],
        },
    ]
    config = write_app(
        tmp_path / "b",
        classes=("Tally", "Final"),
        bindings={"COUNTER": "Tally", "FINAL": "Final"},
        migrations=migrations,
    )
    result = await rt.deploy(config)
    assert result["applied"] == ["v2", "v3"]
    assert await namespace_classes(rt) == {"COUNTER": "Tally", "FINAL": "Final"}
    assert await rt.namespace("COUNTER").get_by_name("x").get() == 4
    assert await rt.namespace("FINAL").get_by_name("y").increment() == 1
    last = await rt.deploy(config)
    assert last["applied"] == []
    assert [d["version"] for d in await rt.client.deployments()] == [1, 2, 3, 4]


cli = run_cli


@pytest.mark.stateroom(workers=1)
async def test_deploy_dry_run_prints_the_plan_and_changes_nothing(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    await rt.deploy(
        write_app(
            tmp_path / "a",
            classes=("Counter", "Old"),
            bindings={"COUNTER": "Counter"},
            migrations=[{"tag": "v1", "new_classes": ["Counter", "Old"]}],
        )
    )
    await rt.namespace("COUNTER").get_by_name("n").increment(3)
    before = (await rt.client.deployments(), bundle_files(rt), object_files(rt))
    config = write_app(
        tmp_path / "b",
        version="v2",
        classes=("Tally", "Fresh"),
        bindings={"COUNTER": "Tally", "FRESH": "Fresh"},
        migrations=[
            {"tag": "v1", "new_classes": ["Counter", "Old"]},
            {
                "tag": "v2",
                "renamed_classes": [{"from": "Counter", "to": "Tally"}],
                "new_classes": ["Fresh"],
                "deleted_classes": ["Old"],
            },
        ],
    )
    out = await trio.to_thread.run_sync(cli, rt, "deploy", str(config), "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "dry run: nothing was changed" in text
    assert "v2" in text
    assert "create class Fresh" in text
    assert "rename class Counter -> Tally" in text
    assert "delete class Old" in text
    after = (await rt.client.deployments(), bundle_files(rt), object_files(rt))
    assert after == before
    assert await namespace_classes(rt) == {"COUNTER": "Counter"}
    assert await rt.namespace("COUNTER").get_by_name("n").version() == "v1"

    # A dry run of a deploy that would be refused says why and exits non-zero.
    bad = write_app(
        tmp_path / "c",
        classes=("Fresh",),
        bindings={"FRESH": "Fresh"},
        migrations=[
            {"tag": "v1", "new_classes": ["Counter", "Old"]},
            {"tag": "v2", "new_classes": ["Fresh"]},
        ],
    )
    out = await trio.to_thread.run_sync(cli, rt, "deploy", str(bad), "--dry-run")
    assert out.returncode != 0
    assert "'Counter' still has data" in out.stderr
    assert (await rt.client.deployments(), bundle_files(rt)) == before[:2]


@pytest.mark.stateroom(workers=1)
async def test_deleting_a_class_fails_its_busy_objects_calls_and_removes_their_files(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    both = {"COUNTER": "Counter", "OTHER": "Other"}
    await rt.deploy(
        write_app(tmp_path / "a", classes=("Counter", "Other"), bindings=both, migrations=TWO)
    )
    other = rt.namespace("OTHER").get_by_name("busy")
    await other.increment(1)
    [path] = (rt.data / "objects").rglob(f"{other.id}.sqlite")
    started = tmp_path / "started"
    errors: list[BaseException] = []

    async def hold() -> None:
        try:
            await other.hold(str(started), str(tmp_path / "never"))
        except stateroom.DurableObjectError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        with trio.fail_after(20):
            while not started.exists():
                await trio.sleep(0.01)
        await rt.deploy(
            write_app(
                tmp_path / "b",
                classes=("Counter",),
                migrations=TWO + [{"tag": "v2", "deleted_classes": ["Other"]}],
            )
        )
    assert len(errors) == 1, "the call in flight on a deleted class must fail, not hang"
    assert not path.parent.exists(), f"{path.parent} survived the deletion of its class"


@pytest.mark.stateroom(workers=1)
async def test_restart_sweeps_files_a_crash_mid_deploy_left_behind(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    both = {"COUNTER": "Counter", "OTHER": "Other"}
    await rt.deploy(
        write_app(tmp_path / "a", classes=("Counter", "Other"), bindings=both, migrations=TWO)
    )
    other = rt.namespace("OTHER").get_by_name("gone")
    await other.increment(1)
    [path] = (rt.data / "objects").rglob(f"{other.id}.sqlite")
    await rt.deploy(
        write_app(
            tmp_path / "b",
            classes=("Counter",),
            migrations=TWO + [{"tag": "v2", "deleted_classes": ["Other"]}],
        )
    )
    await rt.stop(kill=True)
    # What a kill -9 between recording a deploy and finishing it can leave behind.
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stale")
    orphan = rt.data / "deployments" / "000007.bundle"
    orphan.write_bytes(b"never recorded")
    await rt.start(rt._nursery)
    assert not path.parent.exists()
    assert not orphan.exists()
    assert bundle_files(rt) == ["000001.bundle", "000002.bundle"]
    assert await rt.namespace("COUNTER").get_by_name("c").increment() == 1
