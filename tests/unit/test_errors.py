from stateroom import DurableObjectError, ObjectResetError, OverloadedError, RemoteError
from stateroom._errors import error_from_fields, error_to_fields


def test_runtime_errors_are_rebuilt_by_kind_with_flags():
    for exc in (
        ObjectResetError("reset", retryable=True),
        OverloadedError("busy"),
        DurableObjectError("plain"),
    ):
        back = error_from_fields(error_to_fields(exc))
        assert type(back) is type(exc)
        assert (back.retryable, back.overloaded, str(back)) == (
            exc.retryable,
            exc.overloaded,
            str(exc),
        )
    assert OverloadedError("x").overloaded and OverloadedError("x").retryable


def test_user_exceptions_come_back_as_builtins_or_remote_errors():
    back = error_from_fields(error_to_fields(KeyError("k")))
    assert type(back) is KeyError and back.remote is True

    class Mine(Exception):
        pass

    back = error_from_fields(error_to_fields(Mine("text")))
    assert isinstance(back, RemoteError) and back.type_name == "Mine" and back.message == "text"
    # A name that is a builtin but not an exception never gets called.
    back = error_from_fields({"kind": "remote", "type": "print", "message": "x"})
    assert isinstance(back, RemoteError)
