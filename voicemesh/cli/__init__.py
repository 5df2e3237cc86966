"""The ``voicemesh`` command: models, the embedded mesh (up, status, stop/down), clean, version."""

from __future__ import annotations

import argparse
import logging
import sys


def _parse_scale(values: list[str]) -> dict[str, int]:
    scale: dict[str, int] = {}
    for item in values:
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit() or int(count) < 0:
            raise argparse.ArgumentTypeError(f"--scale takes SERVICE=N, got {item!r}")
        scale[name] = int(count)
    return scale


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``voicemesh``."""
    parser = argparse.ArgumentParser(prog="voicemesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list, prepare and verify the bundled models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="show every known model and whether it is ready")
    prepare = models_sub.add_parser("prepare", help="prepare bundled models into the cache")
    prepare.add_argument("names", nargs="*", help="models to prepare (default: all bundled)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if present")
    verify = models_sub.add_parser("verify", help="check prepared models against checksums")
    verify.add_argument("names", nargs="*", help="models to verify (default: all bundled)")

    up = sub.add_parser("up", help="start the embedded mesh as local processes")
    up.add_argument("--host", default="127.0.0.1", help="interface for every service")
    up.add_argument("--port", type=int, default=8080, help="gateway port")
    up.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting the bundled one"
    )
    up.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="replicas of a service, e.g. stt_cpu_ws=3 (repeatable)",
    )
    up.add_argument("--no-gpu", action="store_true", help="never start stt_gpu_ws")
    up.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C stops the mesh"
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for every service to be healthy",
    )
    up.add_argument(
        "--with-nginx",
        action="store_true",
        help="put nginx (the front door: control panel, limits) before the gateway",
    )
    up.add_argument(
        "--nginx-port",
        type=int,
        default=None,
        help="nginx port (default: VOICEMESH_NGINX_PORT or 8000)",
    )

    nginx = sub.add_parser("nginx", help="the nginx front door's config")
    nginx_sub = nginx.add_subparsers(dest="nginx_command", required=True)
    render = nginx_sub.add_parser("render", help="print the config rendered from settings")
    render.add_argument("--target", choices=["compose", "embedded"], default="compose")
    render.add_argument("--output", default=None, help="write here instead of stdout")

    probe = sub.add_parser("probe", help="exit 0 when URL answers 200 (container healthchecks)")
    probe.add_argument("url")
    probe.add_argument("--timeout", type=float, default=3.0)

    sub.add_parser("status", help="show each service, pid, health and port")
    for verb, text in (("down", "stop the embedded mesh"), ("stop", "the same as down")):
        down = sub.add_parser(verb, help=text)
        down.add_argument(
            "--timeout",
            type=float,
            default=20.0,
            help="seconds to wait for a graceful stop before killing",
        )
        down.add_argument(
            "--force", action="store_true", help="kill at once, without a graceful stop"
        )
    clean = sub.add_parser("clean", help="remove caches and logs under VOICEMESH_HOME")
    clean.add_argument("-y", "--yes", action="store_true", help="do not ask first")
    clean.add_argument(
        "--models", action="store_true", help="also remove the prepared models (prepared again)"
    )
    sub.add_parser("version", help="print the version")
    supervise = sub.add_parser("supervise", help=argparse.SUPPRESS)
    supervise.add_argument("--plan", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``voicemesh`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from voicemesh.cli import models

        if args.models_command == "list":
            return models.cli_list()
        if args.models_command == "prepare":
            return models.cli_prepare(args.names, force=args.force)
        return models.cli_verify(args.names)

    if args.command == "nginx":
        from voicemesh.cli.front_door import nginx_render

        return nginx_render(args.target, args.output)
    if args.command == "probe":
        from voicemesh.cli.front_door import probe

        return probe(args.url, args.timeout)
    if args.command == "version":
        import voicemesh

        print(f"voicemesh {voicemesh.__version__}")
        return 0
    if args.command == "clean":
        from voicemesh.cli.clean import cmd_clean

        return cmd_clean(yes=args.yes, models=args.models)

    from voicemesh.cli import mesh

    if args.command == "up":
        try:
            scale = _parse_scale(args.scale)
        except argparse.ArgumentTypeError as exc:
            print(f"voicemesh up: {exc}", file=sys.stderr)
            return 2
        nginx = None
        if args.with_nginx:
            from voicemesh.nginx import NginxSettings

            nginx = NginxSettings()
            if args.nginx_port is not None:
                nginx = nginx.model_copy(update={"port": args.nginx_port})
        return mesh.cmd_up(
            host=args.host,
            port=args.port,
            redis_url=args.redis_url,
            scale=scale,
            no_gpu=args.no_gpu,
            foreground=args.foreground,
            timeout=args.timeout,
            nginx=nginx,
        )
    if args.command == "status":
        return mesh.cmd_status()
    if args.command in ("down", "stop"):
        return mesh.cmd_down(timeout=args.timeout, force=args.force)
    if args.command == "supervise":
        return mesh.cmd_supervise(args.plan)
    return 2
