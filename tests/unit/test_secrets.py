"""Secrets stay with the tool: the environment of every child that runs user code, and the spec's secret_env."""

import pytest

from pipeline.errors import ConfigError
from pipeline.torchserve.childenv import TOKEN_ENV, child_env, is_secret_name, withheld_names
from tests.unit._support import spec_for

CALLER = {
    "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2",
    TOKEN_ENV: "tok-endpoint", "GITHUB_TOKEN": "tok-gh", "aws_secret_access_key": "sec-aws",
    "AWS_ACCESS_KEY_ID": "key-aws", "OPENAI_API_KEY": "key-openai", "DB_PASSWORD": "pw-db", "PGPASSWD": "pw-pg",
    "GOOGLE_APPLICATION_CREDENTIALS": "/creds.json", "MYAPIKEY": "key-my", "DATABASE_URL": "postgres://u:pw@h/db",
    "MONKEY_BUSINESS": "fine", "KEYBOARD_LAYOUT": "us", "TS_PASSTHROUGH": "fine",
}


def test_secret_names_are_withheld_and_everything_else_is_inherited():
    child = child_env(("DATABASE_URL",), {"PACKAGE_VALIDATE_RUN": "/r"}, base=CALLER)
    secrets = {TOKEN_ENV, "GITHUB_TOKEN", "aws_secret_access_key", "AWS_ACCESS_KEY_ID", "OPENAI_API_KEY",
               "DB_PASSWORD", "PGPASSWD", "GOOGLE_APPLICATION_CREDENTIALS", "MYAPIKEY", "DATABASE_URL"}
    assert child.withheld == tuple(sorted(secrets))
    assert set(child.env) == (set(CALLER) - secrets) | {"PACKAGE_VALIDATE_RUN"}
    assert not {CALLER[n] for n in secrets} & set(child.env.values())
    assert child.env["MONKEY_BUSINESS"] == "fine" and child.env["KEYBOARD_LAYOUT"] == "us"


def test_the_endpoint_token_is_withheld_whatever_the_patterns():
    assert is_secret_name(TOKEN_ENV) and TOKEN_ENV == "PACKAGE_VALIDATE_TOKEN"
    assert withheld_names((), {TOKEN_ENV: "x", "PATH": "/bin"}) == (TOKEN_ENV,)
    assert not is_secret_name("DATABASE_URL") and is_secret_name("DATABASE_URL", ["DATABASE_URL"])


def test_serving_env_arrives_even_under_a_secret_looking_name():
    child = child_env((), {"HF_TOKEN": "from-the-spec"}, base={"HF_TOKEN": "from-the-caller", "PATH": "/bin"})
    assert child.env["HF_TOKEN"] == "from-the-spec", "the user asked for it in serving.env"
    assert child.withheld == ("HF_TOKEN",), "the caller's own value still stayed behind"


def test_the_server_environment_is_built_by_child_env(tmp_path, monkeypatch):
    from pipeline.torchserve.config import server_env
    from pipeline.torchserve.process import JavaInfo

    monkeypatch.setenv("PV_TEST_SECRET", "s3cret-value")
    monkeypatch.setenv("PV_TEST_LISTED", "listed-value")
    monkeypatch.setenv(TOKEN_ENV, "endpoint-token")
    spec = spec_for(serving={"env": {"PV_TEST_API_KEY": "asked-for"}, "secret_env": ["PV_TEST_LISTED"]})
    java = JavaInfo(home=tmp_path / "jdk", executable=tmp_path / "jdk/bin/java", version="17", major=17)
    built = server_env(spec, java, tmp_path / "tmp", tmp_path / "logs", tmp_path / "run")
    assert not {"PV_TEST_SECRET", "PV_TEST_LISTED", TOKEN_ENV} & set(built.env)
    assert {"PV_TEST_SECRET", "PV_TEST_LISTED", TOKEN_ENV} <= set(built.withheld)
    assert built.env["PV_TEST_API_KEY"] == "asked-for" and built.env["PACKAGE_VALIDATE_RUN"] == str(tmp_path / "run")


def test_secret_env_is_a_list_of_names_and_cannot_also_be_set():
    assert spec_for(serving={"secret_env": ["A", "B"]}).serving.secret_env == ("A", "B")
    with pytest.raises(ConfigError, match="DB_URL: listed in serving.secret_env and set in serving.env"):
        spec_for(serving={"secret_env": ["DB_URL"], "env": {"DB_URL": "x"}})
