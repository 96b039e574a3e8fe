"""``python -m steel_defect.serve ckpt=PATH [port=8000] [key=value ...]`` (keys: steel_defect.serve.settings)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    from steel_defect.serve.settings import parse_args

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        from steel_defect.serve.settings import FIELDS

        print(
            "keys: "
            + ", ".join(f"{k}={f.default!r}" if k != "ckpt" else "ckpt=PATH" for k, f in FIELDS.items())
        )
        return 0
    try:
        settings = parse_args(argv)
        from steel_defect.serve.app import build_server, describe, load_predictor

        # Load once here: a bad checkpoint or thresholds fail now, with their message, before any worker starts.
        predictor = load_predictor(settings, "cpu")
        info = {**describe(predictor, settings.runtime), "device": settings.accelerator}
        del predictor
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    server = build_server(settings, info)
    print(
        f"serving {', '.join(info['checkpoints'])} (classes {info['classes']}, thresholds: "
        f"{info['thresholds']['source']}) on http://{settings.host}:{settings.port}/",
        flush=True,
    )
    server.run(host=settings.host, port=settings.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
