#!/bin/sh
# The dispatcher is a Ray driver, and a Ray driver attaches to a Ray node on its own
# machine: this container first joins the cluster as a node that runs nothing (no CPUs,
# no GPUs). The progress board lives there too (services/cluster.py places it on the
# dispatcher's node), never on a GPU worker that may be lost. Then the command runs.
set -eu
ray start --address="${CROSSFOLD_RAY_ADDRESS:?set CROSSFOLD_RAY_ADDRESS to the Ray head}" \
    --num-cpus=0 --num-gpus=0 --object-store-memory=200000000 --disable-usage-stats
exec "$@"
