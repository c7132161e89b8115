#!/usr/bin/env bash
# Subscription notification benchmark: starts the release gateway on a fresh database, N local HTTP receivers and
# M rest-hook Subscriptions (SDOHCC Task topic) spread over them, then makes a burst of Task updates and measures
# notifications delivered per second end to end (first update sent to last notification received). The receivers
# also check that every subscription got each event number once and in order.
# Usage: scripts/bench-notify.sh sqlite|postgres [receivers] [subscriptions] [updates]
#   e.g. scripts/bench-notify.sh sqlite 4 20 500      (20 subscriptions x 500 events = 10,000 notifications)
# Environment: CONTENT (id-only | full-resource | empty, default id-only), TASKS (Tasks the updates rotate over,
# default 8), CLIENTS (concurrent updaters, default 4), SDOH_GATEWAY_SUBSCRIPTIONS__* to tune the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}
receivers=${2:-4}
subscriptions=${3:-20}
updates=${4:-500}
content=${CONTENT:-id-only}
tasks=${TASKS:-8}
clients=${CLIENTS:-4}
source scripts/lib/gateway-bench.sh
start_gateway "$backend" bench_notify
sample_peak_rss
base="http://127.0.0.1:$http_port/fhir"

receiver_pids=()
stop_receivers() { for p in "${receiver_pids[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cleanup; }
trap stop_receivers EXIT

cat > "$work/receiver.py" <<'EOF'
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
lock = threading.Lock()
last, counts = {}, {"notifications": 0, "events": 0, "duplicates": 0, "out_of_order": 0}
class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        params = body["entry"][0]["resource"]["parameter"]
        kind = next(p["valueCode"] for p in params if p["name"] == "type")
        numbers = [int(p["part"][0]["valueString"]) for p in params if p["name"] == "notification-event"]
        with lock:
            if kind == "event-notification":
                counts["notifications"] += 1
                for n in numbers:
                    previous = last.get(self.path, 0)
                    if n <= previous: counts["duplicates"] += 1
                    elif n != previous + 1: counts["out_of_order"] += 1
                    last[self.path] = max(previous, n)
                    counts["events"] += 1
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        with lock: data = json.dumps(counts).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
EOF

ports=()
for _ in $(seq 1 "$receivers"); do
  port=$(free_port); ports+=("$port")
  python3 "$work/receiver.py" "$port" & receiver_pids+=($!)
done
for port in "${ports[@]}"; do
  until curl -sf "http://127.0.0.1:$port/count" >/dev/null; do sleep 0.05; done
done

# The Tasks first (their creation is not part of the burst), then the subscriptions, all active before the burst.
python3 - "$base" "$tasks" "$subscriptions" "$content" "${ports[@]}" > "$work/setup.json" <<'EOF'
import json, sys, time, urllib.request
base, tasks, subscriptions, content, ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
def send(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")
task_ids = []
for i in range(tasks):
    task = send("POST", "/Task", {"resourceType": "Task", "status": "requested", "intent": "order",
        "requester": {"reference": "Organization/clinic"}, "owner": {"reference": "Organization/bench-cbo"},
        "description": "bench 0"})
    task_ids.append(task["id"])
ext = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
sub_ids = []
for i in range(subscriptions):
    port = ports[i % len(ports)]
    sub = send("POST", "/Subscription", {"resourceType": "Subscription", "reason": "bench",
        "criteria": "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task",
        "_criteria": {"extension": [{"url": ext + "backport-filter-criteria", "valueString": "Task?owner=Organization/bench-cbo"}]},
        "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{port}/s{i}", "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": ext + "backport-payload-content", "valueCode": content}]}}})
    sub_ids.append(sub["id"])
deadline = time.time() + 60
for sid in sub_ids:
    while send("GET", f"/Subscription/{sid}")["status"] != "active":
        if time.time() > deadline: sys.exit(f"Subscription/{sid} did not become active")
        time.sleep(0.05)
print(json.dumps({"tasks": task_ids}))
EOF

started=$(date +%s.%N)
python3 - "$base" "$work/setup.json" "$updates" "$clients" <<'EOF'
import http.client, json, sys, threading, urllib.parse
base, setup, updates, clients = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
url = urllib.parse.urlparse(base)
tasks = setup["tasks"]
clients = min(clients, len(tasks))
def updater(worker):
    conn = http.client.HTTPConnection(url.hostname, url.port)
    # Each updater has Tasks of its own, so no two writers race on one Task.
    owned = tasks[worker::clients]
    for k, n in enumerate(range(worker, updates, clients)):
        tid = owned[k % len(owned)]
        conn.request("GET", f"{url.path}/Task/{tid}")
        task = json.loads(conn.getresponse().read())
        task["description"] = f"bench {n + 1}"
        conn.request("PUT", f"{url.path}/Task/{tid}", json.dumps(task),
                     {"Content-Type": "application/fhir+json", "If-Match": f'W/"{task["meta"]["versionId"]}"'})
        response = conn.getresponse(); response.read()
        if response.status != 200: sys.exit(f"update answered {response.status}")
threads = [threading.Thread(target=updater, args=(w,)) for w in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
EOF
expected=$((subscriptions * updates))
totals() {
  for port in "${ports[@]}"; do curl -s "http://127.0.0.1:$port/count"; echo; done |
    python3 -c 'import json,sys; rows=[json.loads(l) for l in sys.stdin if l.strip()]; print(" ".join(str(sum(r[k] for r in rows)) for k in ("events","notifications","duplicates","out_of_order")))'
}
deadline=$(( $(date +%s) + ${BENCH_TIMEOUT_SECS:-600} ))
while :; do
  read -r events notifications duplicates out_of_order <<<"$(totals)"
  [ "$events" -ge "$expected" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $events of $expected events arrived" >&2; exit 1; }
  sleep 0.05
done
finished=$(date +%s.%N)
python3 - <<EOF
import json
seconds = $finished - $started
print(json.dumps({"backend": "$backend", "receivers": $receivers, "subscriptions": $subscriptions,
    "updates": $updates, "content": "$content", "events": $events, "notifications": $notifications,
    "duplicates": $duplicates, "out_of_order": $out_of_order, "seconds": round(seconds, 3),
    "notifications_per_s": round($notifications / seconds, 1), "events_per_s": round($events / seconds, 1),
    "gateway_peak_rss_kb": $(peak_rss_kb)}))
EOF
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
