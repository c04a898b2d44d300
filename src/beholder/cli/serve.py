"""serve the HTTP API and web page

Serve POST /v1/score, POST /v1/rank, GET /v1/models, GET /healthz and a web page at / (OpenAPI
docs at /docs). The runtime defaults to auto (the fastest installed) here.
"""

# The service runs on FastAPI and uvicorn (the 'serve' extra), imported only when it starts.

from __future__ import annotations

import argparse
import sys

from beholder.cli import add_command
from beholder.cli._common import add_model_arguments, scorer_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    # Limits default to None = the service's own defaults (beholder.serve), which this module does
    # not import here: building the parser must not pay for FastAPI and torch.
    parser = add_command(subparsers, "serve", __doc__)
    add_model_arguments(parser, runtime="auto")  # a service wants the fastest engine installed
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=None,
        help="largest request body in MiB, all files together (default 64); 413 above",
    )
    parser.add_argument("--max-files", type=int, default=None, help="most files per request (default 32)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image, width x height (default 64000000); 422 above; 0 for no limit",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds a request may take, upload included (default 60)"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=None,
        help="how long a request waits for concurrent ones to share a model call (default 5)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="most images per model call (default 32)")
    parser.add_argument(
        "--workers", type=int, default=None, help="image decoding threads (default: 2 x CPUs, max 8)"
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="open connections, idle ones included, before uvicorn answers 503 (default 1024)",
    )
    parser.add_argument(
        "--max-active-requests",
        type=int,
        default=None,
        help="requests handled at once (uploads, decoding, model) before a JSON 503 (default 32)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds a connection may take to send a complete request head before it is closed (default 10)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder.errors import ConfigError

    try:
        from beholder import serve_http
        from beholder.serve import create_app
    except ImportError as exc:
        raise ConfigError(f"serving needs the 'serve' extra ({exc}): pip install 'beholder[serve]'") from exc
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    scorer = scorer_from_args(args, batch_size=args.batch_size, workers=args.workers)
    limits = {
        "max_upload_bytes": int(args.max_upload_mb * 2**20) if args.max_upload_mb is not None else None,
        "max_files": args.max_files,
        "max_pixels": args.max_pixels,
        "request_timeout_s": args.timeout,
        "batch_window_ms": args.batch_window_ms,
    }
    options = {key: value for key, value in limits.items() if value is not None}
    if args.max_pixels == 0:
        options["max_pixels"] = None
    max_connections = _positive(
        args.limit_concurrency, "--limit-concurrency", serve_http.DEFAULT_MAX_CONNECTIONS
    )
    active = _positive(
        args.max_active_requests, "--max-active-requests", serve_http.DEFAULT_MAX_ACTIVE_REQUESTS
    )
    header_timeout = _positive(args.header_timeout, "--header-timeout", serve_http.DEFAULT_HEADER_TIMEOUT_S)
    app = create_app(scorer, max_batch=args.batch_size, max_active_requests=active, **options)
    runtime = app.state.service.runtime_name
    print(
        f"beholder serve: model {scorer.name}, runtime {runtime}, on http://{args.host}:{args.port}/ "
        f"(API docs at /docs)",
        file=sys.stderr,
        flush=True,
    )
    _allow_open_files(max_connections)
    server = serve_http.make_server(
        app,
        host=args.host,
        port=args.port,
        header_timeout_s=header_timeout,
        max_connections=max_connections,
        log_level=args.log_level,
    )
    server.run()
    return 0


def _positive(value, flag: str, default):
    from beholder.errors import ConfigError

    if value is None:
        return default
    if value <= 0:
        raise ConfigError(f"{flag} must be positive, got {value}")
    return value


def _allow_open_files(connections: int) -> None:
    """Raise the soft open-file limit towards the hard one, so that ``connections`` sockets fit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # model files, thread pools, the listening socket
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
