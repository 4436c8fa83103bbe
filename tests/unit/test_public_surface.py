"""Pins the public API of `stateroom` (SPEC §4, §10, §13)."""

import stateroom

EXPECTED = {
    "AlarmInfo", "BindingNotFoundError", "Client", "DeployError", "DurableObject",
    "DurableObjectError", "DurableObjectId", "DurableObjectNamespace", "DurableObjectState",
    "DurableObjectStub", "Headers", "MultiDict", "ObjectResetError", "OverloadedError",
    "RemoteError", "Request", "Response", "SqlError", "SyncClient", "WebSocket",
    "WebSocketPair", "WebSocketRequestResponsePair", "WorkerCrashedError", "WorkerEntrypoint",
    "connect", "connect_sync",
}  # fmt: skip


def test_public_names_are_exported():
    assert set(stateroom.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(stateroom, name)


def test_sql_error_is_a_value_error_with_a_code():
    err = stateroom.SqlError("no such table", 1)
    assert isinstance(err, ValueError) and err.sqlite_code == 1


def test_sdk_imports_neither_supervisor_nor_worker():
    import subprocess
    import sys

    code = (
        "import sys, stateroom, stateroom.testing, stateroom._cli;"
        "bad=[m for m in sys.modules if m.startswith(('stateroom.supervisor','stateroom.worker'))];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
