"""Serve stage job: start the OpenAI-compatible Ray Serve application and keep it up.

Inputs: a :class:`~edray.serve.config.ServeConfig` (model folders, peft adapter folders, the world
folder for the world teacher) and the API key in the environment variable it names.
Outputs: an HTTP endpoint ``http://<host>:<port>/v1`` (``/v1/models``, ``/v1/chat/completions``,
``/health``, ``/ready``) until Ctrl-C, then a clean ``serve.shutdown()``.

Run it with::

    EDRAY_API_KEY=... edray serve --config jobs/serve.yaml
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from edray.config import ConfigError
from edray.console import out
from edray.resources import Demand, ResourcePlan, prepare_ray
from edray.serve.config import ServeConfig


@dataclass
class ServedApp:
    """A running application.

    Attributes:
        base_url: the OpenAI base URL, ``http://host:port/v1``.
        names: every model name a request may use.
        app_name: the Ray Serve application name.
    """

    base_url: str
    names: list[str]
    app_name: str


def api_key_digest(config: ServeConfig) -> str:
    """The hex SHA-256 of the API key in ``config.api_key_env``.

    Raises:
        ConfigError: the variable is unset or empty (serving without a key is refused).
    """
    key = os.environ.get(config.api_key_env, "")
    if not key.strip():
        raise ConfigError(
            f"api_key_env: environment variable {config.api_key_env} is not set; the server requires an API "
            f"key (export {config.api_key_env}=<a long random string>)"
        )
    return hashlib.sha256(key.strip().encode()).hexdigest()


def serve_plan(config: ServeConfig) -> ResourcePlan:
    """Every replica of every model deployment and of the ingress, held together while serving."""
    demands = [
        Demand(f"replicas of {m.name}", m.num_replicas, m.num_cpus, m.num_gpus,
               fields=(f"models[{i}].num_replicas", f"models[{i}].num_cpus") + ((f"models[{i}].num_gpus",) if m.num_gpus else ()))
        for i, m in enumerate(config.models)
    ]
    demands.append(Demand("ingress replicas", config.ingress_replicas, config.ingress_num_cpus,
                          fields=("ingress_replicas", "ingress_num_cpus")))
    return ResourcePlan("serve", demands)


def start(config: ServeConfig) -> ServedApp:
    """Start (or update) the application on the current Ray cluster and wait until it is running.

    Connects to the Ray cluster in ``RAY_ADDRESS`` or the one already initialised in this process,
    else starts a local one.

    Returns:
        Where the application answers.

    Raises:
        ConfigError: no models configured or the API key is missing.
        edray.resources.ResourceError: the deployments cannot fit on the cluster.
    """
    from ray import serve

    from edray.serve.app import build_app

    if not config.models:
        raise ConfigError("models: at least one model must be served (the teacher may be external)")
    digest = api_key_digest(config)
    prepare_ray(lambda shape: serve_plan(config))
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, digest), name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    prefix = config.route_prefix.rstrip("/")
    return ServedApp(
        base_url=f"http://{config.host}:{config.port}{prefix}/v1",
        names=config.served_names(),
        app_name=config.app_name,
    )


def stop(app: ServedApp | None = None) -> None:
    """Delete one application, or shut Serve down entirely when ``app`` is None."""
    from ray import serve

    if app is None:
        serve.shutdown()
    else:
        serve.delete(app.app_name)


def run(config: ServeConfig, block: bool = True) -> ServedApp:
    """``edray serve``: start the application, print where it answers, serve until Ctrl-C / SIGTERM.

    Args:
        config: the serve config.
        block: wait for a signal, then shut down; ``False`` returns once the application is up.

    Returns:
        The running application (after shutdown when ``block``).
    """
    app = start(config)
    out.print(f"serving {', '.join(app.names)} at {app.base_url} (API key from ${config.api_key_env})")
    if config.external_teacher is not None:
        ext = config.external_teacher
        out.print(f"teacher: {ext.model} at {ext.base_url} (external, key from ${ext.api_key_env}; not served here)")
    if not block:
        return app
    stop_event = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop_event.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop_event.is_set():
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        out.print("shutting down")
        stop()
    return app
