"""``fmnist-mlp serve``: a trained model over HTTP (MLflow's /invocations, /predict, a page)."""

from __future__ import annotations

from pathlib import Path

import click

from fmnist_mlp.cli.common import data_dir_option, exit_codes_help
from fmnist_mlp.io.terminal import emit, show


@click.command(epilog=exit_codes_help(0, 1, 2))   # SIGTERM and Ctrl-C drain, then exit 0
@click.argument("targets", metavar="RUN_DIR_OR_MODEL...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Any but a loopback address needs a token or --no-auth.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind (0: a free one; the URL is printed on stdout).")
@click.option("--token", metavar="TOKEN", default=None,
              help="Bearer token every route but /ping and the page requires (default: "
                   "$FMNIST_MLP_SERVE_TOKEN; the variable keeps it out of the process list).")
@click.option("--no-auth", is_flag=True,
              help="Serve a non-loopback --host without a token, on purpose (a trusted network).")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads that parse bodies and decode images beside the forward pass.")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0.001, 4096),
              help="Largest request body, in MiB (413 past it).")
@click.option("--max-rows", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Most images in one /invocations request (413 past it).")
@click.option("--max-files", default=64, show_default=True, type=click.IntRange(1, 10_000),
              help="Most image files in one /predict request (413 past it).")
@click.option("--max-concurrency", default=32, show_default=True, type=click.IntRange(1, 10_000),
              help="Scoring requests in flight at once; past it: 503 with Retry-After.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds for one request, its upload included (408 or 504 past it).")
@click.option("--head-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a connection has to send its request line and headers (408 past it).")
@click.option("--max-connections", default=1000, show_default=True,
              type=click.IntRange(1, 100_000),
              help="Open connections; past it the oldest one not inside a request is closed.")
@click.option("--no-access-log", is_flag=True, help="No line on stderr per request.")
@data_dir_option
def serve(targets, host, port, token, no_auth, threads, max_body_mb, max_rows, max_files,
          max_concurrency, timeout, head_timeout, max_connections, no_access_log, data_dir):
    """Serve a trained model over HTTP until SIGTERM or Ctrl-C (then: drain, exit 0).

    RUN_DIR_OR_MODEL is what predict takes (a run directory, .npz or .safetensors); several are
    an ensemble. Routes: POST /invocations (MLflow's scoring protocol: JSON inputs, instances,
    dataframe_split, dataframe_records, or CSV; or a .npy file), POST /predict (image files,
    multipart), GET /ping, /health, /version, /metrics, and GET / (a page: drop a photo or
    draw). Prints the URL on stdout once it answers; one access-log line per request on stderr.
    Needs the serve extra (pip install -e '.[serve]'). Details: docs/serving.md.
    """
    from fmnist_mlp.predict.images import require_pillow
    from fmnist_mlp.serve.exchange import MiB, Limits
    from fmnist_mlp.serve.model import load_served
    from fmnist_mlp.serve.server import Settings, bind, check_settings, serve as run, token_from
    from fmnist_mlp.errors import require_extra

    limits = Limits(max_body=int(max_body_mb * MiB), max_rows=max_rows, max_files=max_files,
                    max_concurrency=max_concurrency, timeout=timeout)
    settings = Settings(host=host, port=port, token=token_from(token), no_auth=no_auth,
                        threads=threads, head_timeout=head_timeout,
                        max_connections=max_connections, access_log=not no_access_log,
                        limits=limits)
    check_settings(settings)
    require_extra("uvicorn", "serve", "fmnist-mlp serve")
    require_pillow()
    model = load_served(targets, data_dir)
    sock = bind(host, port)

    def ready(url: str) -> None:
        names = ", ".join(str(m.path) for m in model.members)
        show(f"serving {names} on {url} (SIGTERM or Ctrl-C stops)")
        emit(url)                                   # exact: scripts read it

    run(model, settings, sock, on_ready=ready)
    show("stopped")
