"""What a master's INFO says would lose claims: each setting, its fix, what could not be checked."""
import pytest

from coupon.redis_guard import Verdict, setting_problems

SOUND = {"redis_version": "7.0.15", "maxmemory_policy": "noeviction", "aof_enabled": 1}


def problems(production=True, cluster=False, **fields):
    return setting_problems("10.0.0.1:6379", {**SOUND, **fields}, production, cluster)


def test_a_sound_redis_has_no_problem():
    assert problems() == ([], [])
    assert problems(redis_version="6.2.0") == ([], [])


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl",
                                    "allkeys-lfu", "volatile-lfu", "volatile-random"])
def test_every_policy_but_noeviction_is_a_problem_in_every_env(policy):
    for production in (True, False):
        (sentence,), unchecked = problems(production, maxmemory_policy=policy)
        assert sentence.startswith("Redis 10.0.0.1:6379 has maxmemory-policy " + policy)
        assert "set maxmemory-policy noeviction" in sentence and not unchecked


@pytest.mark.parametrize("version", ["6.0.16", "5.0.14", "6.1.0", "2.8.24"])
def test_a_redis_older_than_the_scripts_need(version):
    (sentence,), _ = problems(redis_version=version)
    assert sentence.startswith(f"Redis 10.0.0.1:6379 is version {version}; the scripts need 6.2")
    assert sentence.endswith("upgrade it")


def test_no_append_only_file_matters_for_a_single_redis_in_production_only():
    (sentence,), _ = problems(aof_enabled=0)
    assert sentence.startswith("Redis 10.0.0.1:6379 has appendonly no")
    assert "set appendonly yes" in sentence
    assert problems(production=False, aof_enabled=0) == ([], [])
    assert problems(cluster=True, aof_enabled=0) == ([], [])  # its replicas keep the claims (WAIT)


def test_what_info_does_not_say_is_unchecked_not_refused():
    found, unchecked = setting_problems("r", {}, production=True, cluster=False)
    assert found == []
    assert [u.split(":")[1].split(" could")[0].strip() for u in unchecked] == [
        "its version", "maxmemory-policy", "appendonly"]
    assert problems(redis_version="unstable")[1] == [
        "Redis 10.0.0.1:6379: its version could not be checked (INFO says 'unstable')"]


def test_several_problems_at_once():
    found, _ = problems(redis_version="6.0.9", maxmemory_policy="allkeys-lru", aof_enabled=0)
    assert len(found) == 3


def test_a_verdict_warns_of_problems_that_do_not_refuse():
    assert Verdict(("p",), ("u",), refuses=False).warnings == ("p", "u")
    assert Verdict(("p",), ("u",), refuses=True).warnings == ("u",)
    assert Verdict().warnings == ()
