import pytest

from stateroom._config import ConfigError, load_config, normalize_config


def test_toml_config_is_normalized(tmp_path):
    (tmp_path / "stateroom.toml").write_text(
        'name = "demo"\nmain = "app.py"\n'
        '[[durable_objects.bindings]]\nname = "COUNTER"\nclass_name = "Counter"\n'
        '[[migrations]]\ntag = "v1"\nnew_sqlite_classes = ["Counter"]\n'
        '[[migrations]]\ntag = "v2"\nrenamed_classes = [{from = "Counter", to = "Tally"}]\n'
        '[vars]\nGREETING = "hello"\n'
    )
    config, folder = load_config(tmp_path / "stateroom.toml")
    assert folder == tmp_path.resolve()
    assert config["bindings"] == {"COUNTER": "Counter"}
    assert config["migrations"][0]["new_classes"] == ["Counter"]
    assert config["migrations"][1]["renamed_classes"] == [{"from": "Counter", "to": "Tally"}]
    assert config["vars"] == {"GREETING": "hello"}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"bindings": {"X": "not a class"}}, "identifier"),
        ({"migrations": [{"tag": "v1"}, {"tag": "v1"}]}, "twice"),
        ({"migrations": [{"new_classes": ["A"]}]}, "tag"),
        ({"migrations": [{"tag": "v1", "bogus": 1}]}, "unknown keys"),
        ({"bindings": {"A": "A"}, "vars": {"A": 1}}, "both"),
    ],
)
def test_bad_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        normalize_config(raw)


def test_missing_and_invalid_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
