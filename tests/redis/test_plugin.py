"""Enabling the Redis plugins: by argument, by environment, and bad settings."""

from __future__ import annotations

import pytest

from taskforge_backends.redis import RedisPlugin
from taskforge_backends.redis._settings import RedisSettings
from taskforge_core import TaskForge
from taskforge_core.errors import ConfigurationError


def test_the_environment_variable_registers_one_plugin(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: object
) -> None:
    monkeypatch.setenv("TASKFORGE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKFORGE_REDIS_PREFIX", "envprefix")
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db")
    plugins = [p for p in app.plugins.get_plugins() if isinstance(p, RedisPlugin)]
    assert len(plugins) == 1
    assert plugins[0].settings == RedisSettings(url=redis_url, prefix="envprefix")


def test_a_plugin_given_by_argument_is_not_doubled_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: object
) -> None:
    monkeypatch.setenv("TASKFORGE_REDIS_URL", "redis://elsewhere:6379/0")
    mine = RedisPlugin(redis_url, prefix="mine")
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", plugins=[mine])
    assert [p for p in app.plugins.get_plugins() if isinstance(p, RedisPlugin)] == [mine]


def test_without_configuration_no_plugin_is_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("TASKFORGE_REDIS_URL", raising=False)
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db")
    assert not [p for p in app.plugins.get_plugins() if isinstance(p, RedisPlugin)]


@pytest.mark.parametrize(
    ("url", "prefix", "message"),
    [
        ("http://127.0.0.1:6379", "taskforge", "bad Redis URL"),
        ("127.0.0.1:6379", "taskforge", "bad Redis URL"),
        ("redis://127.0.0.1:6379/0", "", "bad Redis key prefix"),
        ("redis://127.0.0.1:6379/0", "two words", "bad Redis key prefix"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(url: str, prefix: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisPlugin(url, prefix=prefix)
