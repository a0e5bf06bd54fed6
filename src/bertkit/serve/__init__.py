"""`bertkit serve`: an HTTP server with dynamic batching over the prediction layer.

  settings.py   ServeArgs, the command's options (torch-free, for `bertkit --help`)
  batcher.py    the queue and the one worker thread that runs the model in batches
  service.py    the model and what each endpoint asks of it, through the offline code paths
  bodies.py     request bodies read and checked; errors.py: the JSON errors
  app.py        the FastAPI app (create_app); metrics.py: Prometheus; page.py: the page at /
  server.py     run_server: uvicorn with a graceful stop on SIGTERM

FastAPI, uvicorn and prometheus-client come with the `serve` extra and are imported only when a
server is made, so bertkit imports without them.
"""

from __future__ import annotations

import argparse
import dataclasses


def cmd_serve(args: argparse.Namespace) -> int:
    """`bertkit serve`: the options checked (ServeArgs), then the model loaded and served until SIGTERM."""
    from bertkit.serve.server import require_serve_packages, run_server
    from bertkit.serve.settings import ServeArgs

    names = {f.name for f in dataclasses.fields(ServeArgs)}
    serve = ServeArgs(**{k: v for k, v in vars(args).items() if k in names})  # checks every value
    require_serve_packages()
    return run_server(serve)
