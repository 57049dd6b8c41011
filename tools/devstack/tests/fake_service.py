"""A stand-in service for the devstack tests: serves /ready (and /api/version) on one port.

Role and port: `gateway` listens on CORRAL_GATEWAY_HOST:CORRAL_GATEWAY_PORT, `emulator` on
`--port`, anything else on CORRAL_HEALTH_PORT. It writes what it saw to
$FAKE_REPORT_DIR/<role>.json (the latest of that role) and <role>-<port>.json (two schedulers share
a role), and answers /ready with $FAKE_READY_STATUS (default 200); FAKE_EXIT_CODE makes it exit
at once with that code, and so does an existing $FAKE_CRASH_FILE (a service that crashes on every
restart).
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(os.environ.get("FAKE_READY_STATUS", "200"))
        if self.path == "/api/version":
            status = 200
        elif self.path != "/ready":
            status = 404
        body = b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"request {self.path}", file=sys.stderr, flush=True)


def main() -> None:
    role = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "service"
    if "FAKE_EXIT_CODE" in os.environ:
        print(f"fake {role} failing on purpose", flush=True)
        sys.exit(int(os.environ["FAKE_EXIT_CODE"]))
    crash_file = os.environ.get("FAKE_CRASH_FILE")
    if crash_file and Path(crash_file).exists():
        print(f"fake {role} crashing on purpose", flush=True)
        sys.exit(3)
    host = "127.0.0.1"
    if role == "gateway":
        host = os.environ["CORRAL_GATEWAY_HOST"]
        port = int(os.environ["CORRAL_GATEWAY_PORT"])
    elif "--port" in sys.argv:
        port = int(sys.argv[sys.argv.index("--port") + 1])
    else:
        port = int(os.environ["CORRAL_HEALTH_PORT"])
    report_dir = os.environ.get("FAKE_REPORT_DIR")
    if report_dir:
        report = {
            "pid": os.getpid(),
            "argv": sys.argv,
            "env": {k: v for k, v in os.environ.items() if k.startswith("CORRAL_")},
        }
        (Path(report_dir) / f"{role}.json").write_text(json.dumps(report))
        (Path(report_dir) / f"{role}-{port}.json").write_text(json.dumps(report))
    server = HTTPServer((host, port), Handler)
    print(f"fake {role} listening on {host}:{port}", flush=True)
    print(f"fake {role} stderr line", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
