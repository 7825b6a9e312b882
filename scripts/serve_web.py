"""`make web`: serve the browser export (models/export/web) on this machine only, and print its URL.

Python's own static file server, with the two MIME types the page needs set here rather than taken from
the machine's /etc/mime.types (a module script must be JavaScript; WebAssembly compiles as it streams
only as application/wasm). With --isolated it also sends the two headers that make the page cross-origin
isolated, which lets onnxruntime-web run on several threads (the page uses one otherwise).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path

from transferkit.deliver.web import missing_page

MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".json": "application/json", ".onnx": "application/octet-stream"}
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
        super().end_headers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the exported page's folder (models/export/web)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--isolated", action="store_true", help="send COOP/COEP: onnxruntime-web on several threads")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if problem := missing_page(folder):
        print(f"make web: {problem}", file=sys.stderr)
        return 1
    handler = functools.partial(type("Page", (Handler,), {"isolated": args.isolated}), directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    except OSError as exc:
        print(f"make web: cannot listen on 127.0.0.1:{args.port}: {exc.strerror} (another port: make web "
              f"WEB_PORT=8001)", file=sys.stderr)
        return 1
    print(f"The model in your browser: http://127.0.0.1:{args.port}/  (Ctrl-C stops the server)", flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
