"""``python -m steel_defect.serve ckpt=PATH [port=8000] [key=value ...]`` (keys: steel_defect.deploy.serve.settings).

The API key comes from the environment (STEEL_DEFECT_API_KEY=KEY; api_key=KEY also works but shows in the
process list); clients send 'Authorization: Bearer KEY'. host=0.0.0.0 or :: needs a key, or
allow_unauthenticated=true. SIGTERM and SIGINT stop every process of the service."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def auth_line(settings) -> str:  # noqa: ANN001
    """What the start-up log says about authentication."""
    from steel_defect.deploy.serve.settings import API_KEY_ENV

    if settings.api_key:
        return "auth: API key required on every route but /health (clients send 'Authorization: Bearer KEY')"
    if settings.loopback:
        return f"auth: none (host={settings.host}: only this machine can connect; set {API_KEY_ENV} to require a key)"
    return (
        f"WARNING auth: NONE on host={settings.host} (allow_unauthenticated=true): anyone who can reach port "
        f"{settings.port} can use the service, the viewer and the images folder; set {API_KEY_ENV} to require a key"
    )


def main(argv: list[str] | None = None) -> int:
    from steel_defect.deploy.serve.settings import parse_args

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        from steel_defect.deploy.serve.settings import FIELDS

        print(
            "keys: "
            + ", ".join(f"{k}={f.default!r}" if k != "ckpt" else "ckpt=PATH" for k, f in FIELDS.items())
        )
        return 0
    try:
        settings = parse_args(argv)
        # OpenCV's own decode limit (read once per process, inherited by the workers), at the service's.
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(settings.max_pixels)
        from steel_defect.deploy.serve.app import build_server, describe, load_predictor

        # Load once here: a bad checkpoint or thresholds fail now, with their message, before any worker starts.
        predictor = load_predictor(settings, "cpu")
        info = {**describe(predictor, settings.runtime), "device": settings.accelerator}
        del predictor
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from steel_defect.deploy.serve.lifecycle import install_stop_handlers, stop_children
    from steel_defect.deploy.serve.limits import uvicorn_options

    server = build_server(settings, info)
    print(
        f"serving {', '.join(info['checkpoints'])} (classes {info['classes']}, thresholds: "
        f"{info['thresholds']['source']}) on http://{settings.host}:{settings.port}/",
        flush=True,
    )
    print(
        auth_line(settings), file=sys.stderr if not settings.api_key and not settings.loopback else sys.stdout
    )
    print(
        f"limits: max_pixels={settings.max_pixels} formats={','.join(settings.formats)} "
        f"max_upload_mb={settings.max_upload_mb:g} read_timeout={settings.read_timeout:g}s "
        f"max_connections={settings.max_connections} max_uploads={settings.max_uploads} "
        f"docs={'on' if settings.docs else 'off'}",
        flush=True,
    )
    install_stop_handlers()
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            generate_client_file=False,
            log_level="warning",
            **uvicorn_options(settings.read_timeout, settings.max_connections),
        )
    except KeyboardInterrupt:  # a stop signal before LitServe's own handling began
        pass
    finally:
        left = stop_children(settings.stop_timeout)
        print(f"stopped{f' (ended {len(left)} leftover processes)' if left else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
