"""`python -m tts_runner.serve`: the HTTP server (tts_runner/server/), OpenAI's speech API and RunPod's
load-balancing mode, on uvicorn.

    python -m tts_runner.serve [--host H] [--port P] [--health-port P] [key=value ...]

Precedence, lowest first: conf/ (the `server` group), the environment (PORT, PORT_HEALTH,
TTS_RUNNER_HOST, TTS_RUNNER_API_KEY, TTS_RUNNER_OVERRIDES, and every variable the queue worker
reads), then this command line (Hydra overrides such as batching.max_batch_size=32, then the flags).
The server listens at once and loads its model on a thread: /ping answers 204 until it is ready.
On SIGTERM it stops accepting connections, lets the requests running finish within
server.shutdown_grace_seconds (those still running then are answered 503 "Worker shutting down"),
and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace

from tts_runner.edge import build
from tts_runner.edge import config as config_mod


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tts_runner.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to listen on (server.host; the image uses 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (server.port; RunPod sets PORT)")
    parser.add_argument("--health-port", type=int, help="a second port for GET /ping (server.health_port; PORT_HEALTH)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (as for python -m tts_runner)")
    return parser.parse_args(argv)


async def serve(app, settings, log_level: str = "info") -> None:
    import uvicorn

    class Draining(uvicorn.Server):
        """uvicorn's server, whose stop signal also starts the service's bounded drain."""

        def handle_exit(self, sig, frame) -> None:
            app.state.service.stop()
            super().handle_exit(sig, frame)

    # uvicorn waits for open connections longer than the grace: a cancelled job ends at its next check, after
    # the decode it may be in (seconds on a loaded CPU), and its answer still goes out
    servers = [Draining(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                       timeout_graceful_shutdown=settings.shutdown_grace_seconds + 30))]
    if settings.health_port and settings.health_port != settings.port:
        from fastapi import FastAPI

        health = FastAPI()
        health.state.service = app.state.service
        health.add_api_route("/ping", app.state.ping, methods=["GET"])
        servers.append(uvicorn.Server(uvicorn.Config(health, host=settings.host, port=settings.health_port,
                                                     log_level="warning")))
    await asyncio.gather(*(s.serve() for s in servers))


def configure(args: argparse.Namespace):
    """The composed config and the server's settings: conf/ < the environment < the command line's
    overrides < its flags."""
    cfg = config_mod.load([*os.environ.get("TTS_RUNNER_OVERRIDES", "").split(), *args.overrides])
    settings = build.server(cfg.server, list(cfg.models.variants))
    flags = {k: v for k, v in (("host", args.host), ("port", args.port), ("health_port", args.health_port)) if v}
    return cfg, replace(settings, **flags)


def _stopped(sig, frame) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, settings = configure(args)
        from tts_runner.serving.memory import limit_arenas

        limit_arenas(build.malloc_arenas(cfg.runtime))  # before the request threads start
        from tts_runner.server.app import create_app  # after the settings: a bad one is told at once
        from tts_runner.server.service import Service

        service = Service(cfg, settings)
        every = build.vitals_every(cfg.worker)
    except Exception as exc:  # noqa: BLE001 - a bad setting is one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(service)
    service.start()
    from tts_runner.serving.vitals import Reporter

    Reporter(service.vitals, every).start()  # a JSON line every worker.vitals_every_seconds
    signal.signal(signal.SIGTERM, _stopped)  # what uvicorn's re-raised SIGTERM runs: exit 0, the drain done
    logging.getLogger(__name__).info("Listening on http://%s:%d (health %s)", settings.host, settings.port,
                                     settings.health_port or settings.port)
    try:
        asyncio.run(serve(app, settings))
    except SystemExit as stopped:  # uvicorn re-raises the stop signal once it has shut down
        return int(stopped.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
