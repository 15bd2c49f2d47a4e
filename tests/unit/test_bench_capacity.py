"""The capacity benchmark's figures (loadtest/bench_capacity) on handmade readings: no services."""
import os

from loadtest.bench_capacity import capacity, median_costs, per_coupon, spent
from loadtest.harness import cpu_seconds, threads_cpu_seconds


def reading(redis, replicas, flushers, mariadb, threads, machine):
    return {"redis": redis, "replicas": replicas, "flushers": flushers, "mariadb": mariadb,
            "mariadb_threads": threads, "machine": machine}


def test_what_each_part_spent_leaves_out_the_threads_of_other_clients():
    before = reading({7001: 1.0, 7002: 2.0}, {7003: 0.5}, 3.0, 10.0, {1: 1.0, 2: 5.0, 3: 0.0}, 100.0)
    after = reading({7001: 1.5, 7002: 2.25}, {7003: 0.75}, 4.0, 13.0, {1: 2.0, 2: 6.5, 4: 0.25}, 120.0)
    # thread 1 served our database, 2 another client's, 4 (new) ours; 3 is gone
    used = spent(before, after, ours={1, 4}, others={2})
    assert used == {"redis": {7001: 0.5, 7002: 0.25}, "replicas": {7003: 0.25}, "flushers": 1.0,
                    "mariadb_whole": 3.0, "mariadb": 1.5, "mariadb_ours": 1.25, "machine": 20.0}


def test_per_coupon_figures_and_shares():
    used = {"redis": {7001: 0.5, 7002: 0.5}, "replicas": {}, "flushers": 1.0, "mariadb": 0.5,
            "mariadb_whole": 2.0, "mariadb_ours": 0.25}
    figures, shares = per_coupon(web_s=8.0, used=used, load_s=2.0, coupons=10_000)
    assert figures == {"web": 800.0, "redis": 100.0, "redis_masters": {"7001": 50.0, "7002": 50.0},
                       "replicas": 0.0, "flushers": 100.0, "mariadb": 50.0, "mariadb_whole": 200.0,
                       "mariadb_ours": 25.0, "load_generator": 200.0}
    # of the service's 1,050 us a coupon; the load generator is no part of it
    assert shares == {"web": 800 / 1050, "redis": 100 / 1050, "replicas": 0.0, "flushers": 100 / 1050,
                      "mariadb": 50 / 1050}


def test_the_capacity_table_and_the_part_that_runs_out_first():
    def run(web, masters):
        return {"redis": "cluster", "us": {"web": web, "redis": sum(masters), "replicas": 30.0, "flushers": 40.0,
                                           "mariadb": 20.0, "mariadb_whole": 25.0, "mariadb_ours": 15.0,
                                           "load_generator": 25.0,
                                           "redis_masters": {str(i): m for i, m in enumerate(masters)}}}
    runs = [run(400.0, [20.0, 20.0, 20.0]), run(500.0, [20.0, 25.0, 20.0]), run(450.0, [30.0, 20.0, 20.0])]
    costs = median_costs(runs, "cluster")
    assert (costs["web"], costs["redis"], costs["redis_hottest"], costs["masters"]) == (450.0, 65.0, 25.0, 3)
    table = capacity(costs, db_cores=4, rates=(10_000, 100_000))
    assert [(part, cores, at) for part, _, _, cores, at in table] == [
        ("Redis, 3 masters", [0.65, 6.5], 40_000.0),  # its hottest master, 25 us a coupon, is one core at 40,000/s
        ("Redis replicas", [0.3, 3.0], 100_000.0),
        ("MariaDB", [0.2, 2.0], 200_000.0),
        ("web workers", [4.5, 45.0], None),  # they scale out: no ceiling
        ("flushers", [0.4, 4.0], None),
    ]


def test_cpu_seconds_of_a_process_and_of_its_threads():
    spent_here = cpu_seconds(os.getpid())
    assert spent_here > 0
    assert sum(threads_cpu_seconds(os.getpid()).values()) <= spent_here + 0.05
    assert cpu_seconds(2 ** 22 + 1) is None  # above pid_max's default: no such process
