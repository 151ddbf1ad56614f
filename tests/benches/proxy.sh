#!/usr/bin/env bash
# Proxy overhead (BENCHMARKS.md "The proxy"): the same GET /v1.0/me to the emulator, direct
# with the token and through the proxy with the consumer secret, N requests on one keep-alive
# connection each (curl reuses it across the URLs of one invocation). Needs a release build:
# cargo build --release -p tokenwarden
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/tokenwarden}
N=${N:-2000}
D=$(mktemp -d) && cd "$D"
$B emulator --listen 127.0.0.1:18080 >/dev/null 2>&1 & EMU=$!
cat > tokenwarden.toml <<'TOML'
[store]
path = "data/tw.db"
[admin]
listen = "127.0.0.1:18420"
[proxy]
listen = "127.0.0.1:18422"
[[proxy.routes]]
prefix = "/graph"
upstream = "http://127.0.0.1:18080/v1.0"
job = "graph"
consumer_secret = "Proxy Key"
[[jobs]]
name = "graph"
scope = "https://graph.microsoft.com/.default"
authority = "http://127.0.0.1:18080"
upstreams = ["http://127.0.0.1:18080"]
[jobs.secrets]
client_id = "Microsoft Client ID"
client_secret = "Microsoft Client Secret"
tenant_id = "Microsoft Tenant ID"
access_token = "Microsoft Access Token"
TOML
printf %s 5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d      | $B secrets set "Microsoft Client ID"
printf %s 'Xq8~demo.Secret_not-for+production/0123=' | $B secrets set "Microsoft Client Secret"
printf %s 8f3c2d1e-4b5a-4c6d-9e8f-0a1b2c3d4e5f      | $B secrets set "Microsoft Tenant ID"
printf %s bench-consumer-key                          | $B secrets set "Proxy Key"
$B run >/dev/null 2>&1 & RUN=$!
trap 'kill $EMU $RUN 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18420/readyz && break; sleep 0.2; done
sleep 1
TOKEN=$($B secrets get "Microsoft Access Token")
stats() { sort -n | awk '{a[NR]=$1; s+=$1} END {printf "median %.3f ms  p99 %.3f ms  mean %.3f ms  (%d requests)\n", a[int(NR/2)]*1000, a[int(NR*0.99)]*1000, s/NR*1000, NR}'; }
urls() { for _ in $(seq "$N"); do printf '%s\n' "url = \"$1\"" 'output = "/dev/null"'; done; }
urls http://127.0.0.1:18080/v1.0/me > direct.cfg
urls http://127.0.0.1:18422/graph/me > proxied.cfg
for round in 1 2 3; do
  echo "round $round"
  s=$(date +%s.%N); curl -s -K direct.cfg -H "Authorization: Bearer $TOKEN" -w '%{time_total}\n' > direct.t; e=$(date +%s.%N)
  printf '  direct   '; stats < direct.t; echo "           $(echo "$N / ($e - $s)" | bc -l | xargs printf '%.0f') requests/s"
  s=$(date +%s.%N); curl -s -K proxied.cfg -H "Proxy-Authorization: Bearer bench-consumer-key" -w '%{time_total}\n' > proxied.t; e=$(date +%s.%N)
  printf '  proxied  '; stats < proxied.t; echo "           $(echo "$N / ($e - $s)" | bc -l | xargs printf '%.0f') requests/s"
done
curl -s http://127.0.0.1:18420/metrics | grep 'proxy_requests_total{result="2xx"}'
echo "daemon RSS: $(grep VmRSS /proc/$RUN/status)"
