"""Start the explorer: open every served codes (building their indexes where needed), bind, serve."""

import socket
import sys

from clipsae.analysis.explore.config import ServeConfig
from clipsae.errors import ClipsaeError

EXIT_INTERRUPTED = 130


def open_explorer(cfg: ServeConfig):
    """The Explorer of ``cfg``'s codes, each index built or checked first."""
    from clipsae.analysis.explore.app import Explorer
    from clipsae.analysis.explore.served import ServedCodes
    from clipsae.device import resolve_device

    device = str(resolve_device(cfg.device))
    served = [ServedCodes(spec.label, spec.store, spec.name, device, progress=cfg.progress) for spec in cfg.served]
    return Explorer(served, int(cfg.max_upload * 1e6), cfg.max_pixels)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); one line where it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given, not 0: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it a
    # kept-alive connection waits ~40 ms (Nagle against the client's delayed ACK) for each answer's body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ClipsaeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_serve(cfg: ServeConfig, echo=print, print_token: bool = False) -> None:
    """Serve until Ctrl-C (or SIGTERM), which ends the process with status 130 and one line."""
    import uvicorn

    from clipsae.analysis.explore.app import build_app
    from clipsae.memory import limit_arenas

    limit_arenas(2)
    explorer = open_explorer(cfg)
    if cfg.index_only:
        echo(f"explorer indexes ready for {', '.join(explorer.served)}")
        return
    if cfg.preload:
        for served in explorer.served.values():
            served.live.preload()
    sock = bind(cfg.host, cfg.port)
    app = build_app(explorer, cfg.token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    echo(f"serving {url_of(sock)}" + (f"?token={cfg.token}" if print_token else ""))
    sys.stdout.flush()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    print("stopped serving", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
