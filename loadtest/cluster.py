"""`make cluster` / `make cluster-stop`: a new local Redis Cluster to try the service on (3 masters,
3 replicas on free loopback ports, each node writing an append-only file with appendfsync always
under instance/cluster/node-N/, each master taking writes only while its replica keeps up:
min-replicas-to-write 1, min-replicas-max-lag 4). Its processes outlive this command; their pids are kept in
instance/cluster/pids, and `stop` ends them by pid.

    python -m loadtest.cluster start    # prints the REDIS_CLUSTER_NODES to export
    python -m loadtest.cluster stop
"""
import glob
import os
import shutil
import signal
import sys

from loadtest.harness import ROOT, LocalCluster

FOLDER = os.path.join(ROOT, "instance", "cluster")
PIDS = os.path.join(FOLDER, "pids")
NODE_TIMEOUT_MS = 5000  # a master silent this long is failed over (see README)
# a master whose replica has not acknowledged for longer refuses writes: one cut off from the
# cluster stops before its replica can be promoted in its place (node timeout + election)
MAX_LAG_S = 4


def start():
    if os.path.exists(PIDS):
        sys.exit(f"a cluster is running already (pids in {PIDS}); `make cluster-stop` first")
    for old in glob.glob(os.path.join(FOLDER, "node-*")):  # a new cluster, on new ports
        shutil.rmtree(old)
    os.makedirs(FOLDER, exist_ok=True)
    cluster = LocalCluster(FOLDER, node_timeout_ms=NODE_TIMEOUT_MS, appendfsync="always", detach=True,
                           max_lag_s=MAX_LAG_S)
    with open(PIDS, "w") as f:
        f.write("\n".join(str(node.proc.pid) for node in cluster.nodes) + "\n")
    print(f"Redis Cluster up: 3 masters, 3 replicas, logs and append-only files in {FOLDER}/")
    print(f"export REDIS_CLUSTER_NODES={cluster.startup_nodes}")


def stop():
    if not os.path.exists(PIDS):
        print("no cluster running")
        return
    with open(PIDS) as f:
        for pid in map(int, f.read().split()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    os.remove(PIDS)
    print(f"cluster stopped; its files stay in {FOLDER}/ (make clean removes them)")


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1] if len(sys.argv) > 1 else "start"]()
