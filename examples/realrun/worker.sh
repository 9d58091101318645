#!/bin/bash
# Runs the commands of runs/queue.txt one at a time (one training process at
# a time on a shared machine). Append lines to the queue while it runs.
# Each line: NAME<TAB>COMMAND. Logs go to runs/logs/NAME.log.
cd "$(dirname "$0")/../.." || exit 1
Q=runs/queue.txt
touch $Q
while true; do
  line=$(flock $Q.lock -c "head -n1 $Q; sed -i 1d $Q")
  if [ -z "$line" ]; then sleep 5; continue; fi
  name=${line%%$'\t'*}; cmd=${line#*$'\t'}
  echo "$(date +%T) start $name" >> runs/worker.log
  bash -c "$cmd" > runs/logs/$name.log 2>&1
  echo "$(date +%T) done $name rc=$?" >> runs/worker.log
done
