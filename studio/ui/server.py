"""`python launch.py` flags → a running Gradio server. Binds 127.0.0.1 unless told; a share link needs auth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio.errors import ArgumentParser, StudioError

DEFAULT_PORT = 7865  # Fooocus's


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python launch.py", description="Start the studio app")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1", metavar="HOST",
                   help="address to bind (default 127.0.0.1; --listen alone binds all interfaces)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--share", action="store_true", help="make a public Gradio link (needs --auth or --auth-file)")
    p.add_argument("--auth", metavar="USER:PASS")
    p.add_argument("--auth-file", type=Path, help="a file of user:pass lines")
    p.add_argument("--preset", help="preset name or path")
    p.add_argument("--model", help="model to start with (default tiny)")
    p.add_argument("--output-dir", type=Path)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--allow-unsafe-pickle", action="store_true", default=None)
    p.add_argument("--styles-dir", type=Path, help="a folder of Fooocus-format style files (*.json)")
    p.add_argument("--loras-dir", type=Path, metavar="DIR",
                   help="the LoRA folder the Models tab lists (default: the models folder's loras/)")
    p.add_argument("--embeddings-dir", type=Path, metavar="DIR",
                   help="the textual-inversion embeddings folder (default: the models folder's embeddings/)")
    p.add_argument("--lru", type=int, help="compiled variants kept in memory (default 3)")
    return p


def parse_auth(auth: str | None, auth_file: Path | None) -> list[tuple[str, str]]:
    lines = []
    if auth:
        lines.append(auth)
    if auth_file:
        from studio.untrusted import MAX_AUTH_FILE_BYTES, read_text_bounded

        text = read_text_bounded(auth_file, MAX_AUTH_FILE_BYTES, f"auth file {auth_file}")
        lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
    pairs = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise StudioError("auth must be user:pass with both parts non-empty")
        pairs.append((user, password))
    return pairs


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def listen_warning(host: str, port: int, auth: list) -> str | None:
    """The warning to print when the app is reachable from other machines with no login."""
    if host in LOOPBACK or auth:
        return None
    return (f"warning: listening on {host}:{port} with no login: anyone who can reach this port can generate "
            "images and see the outputs; add --auth user:pass or --auth-file FILE")


def main(argv: list[str] | None = None) -> int:
    from studio.runtime import prepare_process

    prepare_process()
    try:
        args = build_parser().parse_args(argv)
        auth = parse_auth(args.auth, args.auth_file)
        if args.share and not auth:
            raise StudioError("--share makes the app public: give --auth user:pass or --auth-file FILE")
        if not 1 <= args.port <= 65535:
            raise StudioError(f"--port {args.port} is not a port number (1-65535)")
        from studio.runtime import quiet_libraries
        from studio.settings import AppConfig
        from studio.ui.app import build_app

        quiet_libraries()
        if args.lru is not None and not 1 <= args.lru <= 64:
            raise StudioError(f"--lru {args.lru}: keep 1 to 64 compiled variants in memory")
        config = AppConfig.from_env(models_dir=args.models_dir, output_dir=args.output_dir,
                                    allow_unsafe_pickle=args.allow_unsafe_pickle, styles_dir=args.styles_dir,
                                    compile_cache_size=args.lru, loras_dir=args.loras_dir,
                                    embeddings_dir=args.embeddings_dir)
        app = build_app(config, model=args.model, preset=args.preset)
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    warning = listen_warning(args.listen, args.port, auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    launch(app, args.listen, args.port, auth=auth, share=args.share)
    return 0


def launch(app, host: str, port: int, auth: list | None = None, share: bool = False, block: bool = True,
           quiet: bool = False) -> None:
    """Serve ``app`` (from build_app) behind the guard: the one way studio starts a server, tests included."""
    from starlette.middleware import Middleware

    from studio.ui.guard import MAX_UPLOAD_BYTES, Guard

    parts = app.studio_parts
    parts.attach(app)
    app.launch(server_name=host, server_port=port, share=share, auth=auth or None, inbrowser=False,
               **getattr(app, "studio_launch", {}),
               # Exceptions' own texts can hold server paths: the app says what went wrong itself.
               show_error=False, max_file_size=MAX_UPLOAD_BYTES, prevent_thread_lock=not block, quiet=quiet,
               app_kwargs={"middleware": [Middleware(Guard, blocks=app, gone=parts.copies.gone)]})
