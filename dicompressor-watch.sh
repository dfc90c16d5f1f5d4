#!/usr/bin/env bash
# Watch a folder of patient/series subfolders and merge each new one once it has settled.
#
#   ./dicompressor-watch.sh WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR] [LOG_FILE] [SCAN_STATE_FILE]
#
# A thin wrapper around `dicompressor.py -j --watch`: it finds Python and the script next
# to it, checks its arguments and hands over (exec), so Ctrl+C and SIGTERM reach
# DicomPressor, which stops cleanly after the current folder. The arguments are the
# original DicomPressor's: LOG_FILE adds --log-file; SCAN_STATE_FILE adds
# --scan-state-file (an empty one turns the cache off); with a LOG_FILE and no
# SCAN_STATE_FILE the cache goes beside the log, <log name without its ending>.scan-state.json.
# Extra options can be passed in DICOMPRESSOR_OPTS (for example "--settle 10").
set -euo pipefail

name=$(basename "$0")
usage_line="usage: $name WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR] [LOG_FILE] [SCAN_STATE_FILE]"

help() {
    cat <<EOF
$usage_line

Watch WATCH_DIR and merge (dicompressor.py -j) every patient/series subfolder that holds
new DICOM slices, once its files have stopped changing; each merged folder gets a
.dicompressor_done marker and is not merged again.

  WATCH_DIR         the folder to watch (with its subfolders)
  INTERVAL_SECONDS  seconds between passes, a whole number above 0 (default 300)
  OUTPUT_DIR        also copy every merged file there (created if missing)
  LOG_FILE          also log to this file (rotated at 10 MB)
  SCAN_STATE_FILE   cache of folder times, so a pass reads only folders that changed
                    (default with a LOG_FILE: beside it, <name>.scan-state.json;
                    an empty value turns it off)

Extra dicompressor.py options may be given in DICOMPRESSOR_OPTS, e.g. "--settle 10".
Ctrl+C or SIGTERM stops after the current folder.
EOF
}

usage() {
    echo "$usage_line" >&2
    exit 2
}

if [ $# -eq 0 ]; then
    help
    exit 0
fi
[ $# -le 5 ] || usage
watch_dir=$1
interval=${2:-300}
output_dir=${3:-}
log_file=${4:-}

[ -d "$watch_dir" ] || { echo "error: $watch_dir: no such folder" >&2; exit 2; }
[[ $interval =~ ^[0-9]+$ ]] && [ "$interval" -gt 0 ] || {
    echo "error: INTERVAL_SECONDS must be a whole number above 0, not '$interval'" >&2
    exit 2
}

if [ $# -ge 5 ]; then
    scan_state=$5
elif [ -n "$log_file" ]; then
    log_name=$(basename "$log_file")
    scan_state="$(dirname "$log_file")/${log_name%.*}.scan-state.json"
else
    scan_state=
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script="$here/dicompressor.py"
[ -f "$script" ] || { echo "error: $script not found next to this wrapper" >&2; exit 2; }
python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
[ -n "$python" ] || { echo "error: no python3 found (set PYTHON=/path/to/python3)" >&2; exit 2; }

args=(-j --watch "$interval" -f "$watch_dir")
[ -z "$output_dir" ] || args+=(--output-dir "$output_dir")
[ -z "$log_file" ] || args+=(--log-file "$log_file")
[ -z "$scan_state" ] || args+=(--scan-state-file "$scan_state")
# shellcheck disable=SC2206  # DICOMPRESSOR_OPTS is split on purpose
extra=(${DICOMPRESSOR_OPTS:-})

echo "DicomPressor watch: $watch_dir every ${interval}s${output_dir:+, copies to $output_dir}"
[ -z "$log_file" ] || echo "  log: $log_file"
[ -z "$scan_state" ] || echo "  scan state: $scan_state"
echo "  $python $script ${args[*]} ${extra[*]:-}"
echo "  Ctrl+C stops after the current folder."
exec "$python" "$script" "${args[@]}" ${extra[@]+"${extra[@]}"}
