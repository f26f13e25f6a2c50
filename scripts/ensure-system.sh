#!/usr/bin/env bash
# Install the system packages the portal needs (as root, with apt-get) and start Redis when none
# answers. Idempotent and quick when everything is already there.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v bwrap >/dev/null || need+=(bubblewrap)
# The private network of a distributed job's ranks (gpu_runner/netns.py): ip and nsenter.
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
# C++/CUDA extension labs (cuda_matmul) build with torch's load_inline: a C++ compiler, ninja and
# the Python headers of the interpreter the sandbox runs.
command -v g++ >/dev/null || need+=(g++)
command -v ninja >/dev/null || need+=(ninja-build)
[ -f /usr/include/python3.11/Python.h ] || need+=(python3.11-dev)
if [ "${AISYS_BROWSER_TESTS:-0}" = 1 ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]}; install them (e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
redis_port="${REDIS_PORT:-6379}"
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  echo "starting redis-server on 127.0.0.1:$redis_port"
  mkdir -p var
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$(pwd)/var" --logfile "$(pwd)/var/redis.log"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$redis_port" ping >/dev/null
fi
