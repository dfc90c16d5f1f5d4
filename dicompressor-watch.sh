#!/usr/bin/env bash
# Watch a folder of patient/series subfolders and merge each new one once it has settled.
#
#   ./dicompressor-watch.sh WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR]
#
# A thin wrapper around `dicompressor.py -j --watch`: it finds Python and the script next
# to it, checks its arguments and hands over (exec), so Ctrl+C and SIGTERM reach
# DicomPressor, which stops cleanly after the current folder. Extra options can be passed
# in DICOMPRESSOR_OPTS (for example "--settle 10 --log-file /var/log/dicompressor.log").
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR]" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 3 ] || usage
watch_dir=$1
interval=${2:-300}
output_dir=${3:-}

[ -d "$watch_dir" ] || { echo "error: $watch_dir: no such folder" >&2; exit 2; }
[[ $interval =~ ^[0-9]+$ ]] && [ "$interval" -gt 0 ] || {
    echo "error: INTERVAL_SECONDS must be a whole number above 0, not '$interval'" >&2
    exit 2
}

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
# shellcheck disable=SC2206  # DICOMPRESSOR_OPTS is split on purpose
extra=(${DICOMPRESSOR_OPTS:-})

echo "DicomPressor watch: $watch_dir every ${interval}s${output_dir:+, copies to $output_dir}"
echo "  $python $script ${args[*]} ${extra[*]:-}"
echo "  Ctrl+C stops after the current folder."
exec "$python" "$script" "${args[@]}" ${extra[@]+"${extra[@]}"}
