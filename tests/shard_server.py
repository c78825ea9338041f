"""An HTTP server of a shard folder on 127.0.0.1, for tests (run as a script).

    python tests/shard_server.py ROOT PORT_FILE [serve|flaky|dies AFTER]

``serve``: every file as is. ``flaky``: the first response for each shard (``.tar``) stops
after half its bytes and the connection closes; later requests are served whole. ``dies
AFTER``: the server serves AFTER shard requests whole, then sends half of the next and exits
(a server that goes away in the middle of an epoch). The port it listens on is written to
PORT_FILE once it accepts connections.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ShardHandler(SimpleHTTPRequestHandler):
    mode = "serve"
    after = 0
    served: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".tar") or self.mode == "serve":
            return super().do_GET()
        with self.lock:
            seen = self.served.get(self.path, 0)
            self.served[self.path] = seen + 1
            total = sum(self.served.values())
        cut = (self.mode == "flaky" and seen == 0) or (self.mode == "dies" and total > self.after)
        if not cut:
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if self.mode == "dies":
            os._exit(0)
        self.close_connection = True


def main() -> None:
    root, port_file, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    ShardHandler.mode = mode
    ShardHandler.after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    handler = functools.partial(ShardHandler, directory=root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Path(port_file + ".tmp").write_text(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
