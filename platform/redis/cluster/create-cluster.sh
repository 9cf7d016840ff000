#!/bin/sh
# Create Flashgate's Redis Cluster once, from six nodes already running redis-node.conf:
# three masters and one replica each (redis-cli puts each replica on another host than its master
# when the addresses allow it).
#
#   sh create-cluster.sh 10.0.2.11:6379 10.0.2.12:6379 10.0.2.13:6379 10.0.2.14:6379 10.0.2.15:6379 10.0.2.16:6379
#
# With `requirepass` set, export REDISCLI_AUTH=<password> first. Run it once: the nodes remember the
# Cluster in their cluster-config-file. Add masters later with `redis-cli --cluster add-node` and move
# slots with `redis-cli --cluster rebalance` (docs/scaling.md, "Redis Cluster").
set -eu

if [ "$#" -lt 6 ]; then
    echo "usage: $0 host:port host:port host:port host:port host:port host:port (3 masters + 3 replicas)" >&2
    exit 2
fi

# Ends with a check: every slot covered, the same view on every node. Check again any time with
# `redis-cli --cluster check host:port`.
exec redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
