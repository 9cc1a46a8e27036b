"""`REDIS_URL`: one parser for both forms, and every Redis user (the app's client, Flask-Limiter) built from it."""
from __future__ import annotations

import pytest
from limits.storage import RedisSentinelStorage, RedisStorage, storage_from_string
from redis.sentinel import SentinelConnectionPool

from zenzefi_backend.config import ConfigError, build_config
from zenzefi_backend.config.redis_url import RedisTarget, parse_redis_url

TIMEOUTS = {"socket_timeout": 1.5, "socket_connect_timeout": 0.5}


def test_a_sentinel_url_names_sentinels_service_database_and_both_passwords():
    target = parse_redis_url("redis+sentinel://app:s%40cret%3Ax@10.0.0.1:26380,sentinel-b,[fd00::7]:26381"
                             "/mymaster/3?sentinel_password=sent%2Fpw&sentinel_username=watch")
    assert target.is_sentinel
    assert target.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("fd00::7", 26381))
    assert (target.service_name, target.db) == ("mymaster", 3)
    assert (target.username, target.password) == ("app", "s@cret:x")
    assert (target.sentinel_username, target.sentinel_password) == ("watch", "sent/pw")
    assert target.describe() == "redis+sentinel://10.0.0.1:26380,sentinel-b:26379,[fd00::7]:26381/mymaster/3"
    for secret in ("s@cret", "s%40cret", "sent/pw", "sent%2Fpw"):
        assert secret not in repr(target) and secret not in target.describe()


def test_a_sentinel_url_defaults_to_database_0_and_no_passwords():
    target = parse_redis_url("redis+sentinel://127.0.0.1:26379/mymaster")
    assert (target.db, target.username, target.password, target.sentinel_password) == (0, None, None, None)
    only_password = parse_redis_url("redis+sentinel://:pw@127.0.0.1/mymaster/0")
    assert (only_password.username, only_password.password) == (None, "pw")


def test_a_plain_url_is_read_as_redis_py_reads_it():
    target = parse_redis_url("redis://user:pw@cache:6380/5")
    assert not target.is_sentinel
    assert (target.db, target.username, target.password) == (5, "user", "pw")
    assert target.describe() == "redis://cache:6380/5"


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel:///mymaster/0", "at least one Sentinel"),
    ("redis+sentinel://h:26379", "service name"),
    ("redis+sentinel://h:26379/", "service name"),
    ("redis+sentinel://h:26379/mymaster/zero", "/<service>[/<db index>]"),
    ("redis+sentinel://h:26379/mymaster/0/extra", "/<service>[/<db index>]"),
    ("redis+sentinel://h:26379,,i:26379/mymaster", "empty Sentinel address"),
    ("redis+sentinel://h:notaport/mymaster", "not host[:port]"),
    ("redis+sentinel://h/mymaster?password=x", "unknown option(s) password"),
    ("http://h:6379/0", "use redis://"),
    ("h:6379", "no scheme"),
])
def test_bad_urls_are_refused_at_start_with_the_reason(tmp_path, url, says):
    with pytest.raises(ConfigError, match="REDIS_URL") as refused:
        build_config(str(tmp_path), environ={"REDIS_URL": url})
    assert says in str(refused.value)


def test_a_bad_url_never_echoes_its_password(tmp_path):
    with pytest.raises(ConfigError) as refused:
        build_config(str(tmp_path), environ={"REDIS_URL": "redis://:hunter2secret@h:99999/0"})
    assert "hunter2secret" not in str(refused.value)


def test_the_app_client_follows_the_sentinels_with_the_servers_credentials():
    target = parse_redis_url("redis+sentinel://app:pw@127.0.0.1:26390,127.0.0.1:26391/cache/4?sentinel_password=sp")
    client = target.client(health_check_interval=30, **TIMEOUTS)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "cache"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "app", "pw")
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 0.5)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("127.0.0.1", 26390), ("127.0.0.1", 26391)]
    for sentinel in sentinels:
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert (sentinel_kwargs["password"], sentinel_kwargs["username"]) == ("sp", None)
        assert sentinel.get_retry().get_retries() == 0  # a silent Sentinel is skipped, not retried with backoff
    assert pool.make_connection().retry.get_retries() == 0


def test_the_rate_limiter_uses_the_same_sentinels_service_and_database():
    target = parse_redis_url("redis+sentinel://app:pw@127.0.0.1:26390,127.0.0.1:26391/cache/4")
    uri, options = target.limiter_storage(**TIMEOUTS)
    storage = storage_from_string(uri, **options)
    assert isinstance(storage, RedisSentinelStorage)
    assert storage.service_name == "cache" and storage.use_replicas is False
    kwargs = storage.storage.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "app", "pw")
    for sentinel in storage.sentinel.sentinels:
        # The servers' password is not sent to Sentinels that have none (they would refuse the AUTH).
        assert sentinel.connection_pool.connection_kwargs["password"] is None
        assert sentinel.connection_pool.connection_kwargs["port"] in (26390, 26391)


def test_the_rate_limiter_on_a_plain_url_is_that_server():
    uri, options = parse_redis_url("redis://127.0.0.1:6390/2").limiter_storage(**TIMEOUTS)
    storage = storage_from_string(uri, **options)
    assert isinstance(storage, RedisStorage)
    kwargs = storage.storage.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (6390, 2, 1.5)


def test_config_carries_the_parsed_target_and_the_limiter_storage(tmp_path):
    config = build_config(str(tmp_path), environ={"REDIS_URL": "redis+sentinel://s1:26379,s2:26379/mymaster/1"})
    assert isinstance(config["REDIS_TARGET"], RedisTarget) and config["REDIS_TARGET"].db == 1
    assert config["EMBEDDED"] is False
    assert config["RATELIMIT_STORAGE_URI"] == "redis+sentinel://s1:26379,s2:26379/mymaster"
    assert config["RATELIMIT_STORAGE_OPTIONS"]["db"] == 1
