#!/bin/sh
# The RayJob entrypoint, run on the Ray head: the run config next to this file, with the cluster's Redis. Its URL
# carries the password, so it comes from the environment (a Secret) and never appears in a manifest or a log.
set -eu
exec python -m rlctl.cli run /etc/videorl/config.yaml --set "redis.url=${VIDEORL_REDIS_URL}"
