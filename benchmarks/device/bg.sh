#!/usr/bin/env bash
# Start one science job in the background on the lent GPU machine, in its own process session (setsid), so it runs
# on after this device call returns, for as long as the machine stays warm (the next call within 30 s).
# The job runs from a private copy of the repository (/tmp/repo, made once, carried parts left out), never from
# the call's working tree, which the next call replaces.
#   bash benchmarks/device/bg.sh NAME 'MODEL=gemma3 THREADS=4 CAP=1500 bash benchmarks/device/science.sh mitigate'
# Its output: /tmp/bg/NAME.log (and the job's own logs under /tmp/runs); /tmp/bg/NAME.rc once it has ended.
# Then: WAIT=540 bash benchmarks/device/poll.sh   (waits for the jobs, tars /tmp/runs to $OUT)
set -euo pipefail
name=$1; cmd=$2
mkdir -p /tmp/bg
if [ ! -d /tmp/repo/src ]; then
  mkdir -p /tmp/repo && tar --exclude=./.dev --exclude=./runs -cf - . | tar -xf - -C /tmp/repo  # with .git: reports name the commit
fi
rm -f /tmp/bg/$name.rc
setsid nohup bash -c "cd /tmp/repo && ($cmd); echo \$? > /tmp/bg/$name.rc" > /tmp/bg/$name.log 2>&1 < /dev/null &
echo "started $name (pid $!): $cmd"
