#!/bin/sh
# The issue-19 measurement with wrk as the client: the bench's instant fake upstream
# (`sigorest-bench -serve-fake`), sigorest in front of it, and nginx as a plain reverse proxy
# in front of it too when nginx is installed (examples/nginx-reference.sh). Every level is
# run ROUNDS times, the three targets taking turns in the same order; it prints each run
# and then, per level and target, the median requests/s and p50, and the share of direct.
#
#   cargo build --release && sh examples/wrk-compare.sh            # needs wrk (apt install wrk)
#   ROUNDS=5 DURATION=5 LEVELS="1 10 100" sh examples/wrk-compare.sh
#
# Everything listens on 127.0.0.1 only, on ports from BASE_PORT (default 18180) up.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$here/target/release}
rounds=${ROUNDS:-3}
duration=${DURATION:-4}
levels=${LEVELS:-1 10 100}
base=${BASE_PORT:-18180}
fake_port=$base
gw_port=$((base + 1))
ngx_port=$((base + 2))
command -v wrk >/dev/null || { echo "wrk-compare: needs wrk in PATH (apt install wrk)" >&2; exit 2; }
[ -x "$bin/sigorest" ] && [ -x "$bin/sigorest-bench" ] ||
  { echo "wrk-compare: build first: cargo build --release" >&2; exit 2; }

work=$(mktemp -d)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin/sigorest-bench" -serve-fake -fake-port "$fake_port" >"$work/fake.log" 2>&1 &
pids="$pids $!"
mkdir "$work/gw"
echo "gpt41,kimi" >"$work/gw/models.csv"
(cd "$work/gw" && exec env -i PATH="$PATH" MAMMOUTH_API_KEY=bench \
  MAMMOUTH_BASE_URL="http://127.0.0.1:$fake_port/v1" OLLAMA_HOST=127.0.0.1:9 \
  "$bin/sigorest" -http-port "$gw_port" -https-port 0 -bind 127.0.0.1 -q \
  -max-conns-per-ip 0) >"$work/gw.log" 2>&1 &
pids="$pids $!"
targets="direct:$fake_port sigorest:$gw_port"
if command -v nginx >/dev/null; then
  mkdir "$work/ngx"
  (cd "$work/ngx" && exec sh "$here/examples/nginx-reference.sh" "$ngx_port" \
    "127.0.0.1:$fake_port") >"$work/ngx.log" 2>&1 &
  pids="$pids $!"
  targets="$targets nginx:$ngx_port"
fi

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt41","messages":[{"role":"user","content":"Hello! Say hello back."}]}'
LUA

# Wait until every target answers a chat completion with 200.
for t in $targets; do
  port=${t#*:}
  i=0
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d '{"model":"gpt41","messages":[{"role":"user","content":"hi"}]}' \
    "http://127.0.0.1:$port/v1/chat/completions" 2>/dev/null)" = 200 ]; do
    i=$((i + 1))
    if [ $i -ge 50 ]; then
      echo "wrk-compare: ${t%%:*} did not answer with 200 in 5 s; its log:" >&2
      tail -n 20 "$work"/*.log >&2
      exit 1
    fi
    sleep 0.1
  done
done

# p50 in microseconds from wrk's "50%" line (us, ms or s).
us() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else { sub(/s$/, "", v); print v * 1000000 } }'; }

: >"$work/runs"
r=1
while [ $r -le "$rounds" ]; do
  for c in $levels; do
    threads=2
    [ "$c" -lt 2 ] && threads=1
    for t in $targets; do
      out=$(wrk -t$threads -c"$c" -d"${duration}s" --latency -s "$work/post.lua" \
        "http://127.0.0.1:${t#*:}/v1/chat/completions")
      rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
      p50=$(echo "$out" | awk '$1 == "50%" { print $2 }' | us)
      bad=$(echo "$out" | awk '/Non-2xx|Socket errors/ { print }')
      echo "round $r c=$c ${t%%:*}: $rps req/s, p50 $p50 us${bad:+ ($bad)}"
      echo "$c ${t%%:*} $r $rps $p50" >>"$work/runs"
    done
  done
  r=$((r + 1))
done

# Medians per level and target (the lower middle one for an even count).
med() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "| conc. | target | req/s (median of $rounds) | share of direct | p50 ms | added p50 ms |"
echo "|---:|---|---:|---:|---:|---:|"
for c in $levels; do
  d_rps=$(awk -v c="$c" '$1 == c && $2 == "direct" { print $4 }' "$work/runs" | med)
  d_p50=$(awk -v c="$c" '$1 == c && $2 == "direct" { print $5 }' "$work/runs" | med)
  for t in $targets; do
    n=${t%%:*}
    rps=$(awk -v c="$c" -v n="$n" '$1 == c && $2 == n { print $4 }' "$work/runs" | med)
    p50=$(awk -v c="$c" -v n="$n" '$1 == c && $2 == n { print $5 }' "$work/runs" | med)
    awk -v c="$c" -v n="$n" -v r="$rps" -v p="$p50" -v dr="$d_rps" -v dp="$d_p50" 'BEGIN {
      added = (n == "direct") ? "" : sprintf("%.3f", (p - dp) / 1000)
      printf "| %s | %s | %.0f | %.0f%% | %.3f | %s |\n", c, n, r, 100 * r / dr, p / 1000, added }'
  done
done
