"""A Ray Serve application builder for declarative deployments: ``serve deploy`` and KubeRay's RayService.

``edray serve`` starts the application from a running driver. A RayService (or ``serve deploy`` /
``serve run`` with a Serve config file) instead names an import path and arguments; this module is that
import path::

    applications:
      - name: edray
        route_prefix: /
        import_path: edray.serve.deploy:app
        args:
          config: jobs/real/serve.yaml          # a serve config file (edray serve --config)
          set: ["models.0.num_replicas=2"]      # optional --set overrides

The API key is read from the environment variable the config names (``api_key_env``) in the process
that builds the application: on KubeRay, put it in the head and worker containers' environment from a
Secret. ``host`` and ``port`` of the serve config are not used here: the Serve config's
``http_options`` (or the RayService's service) decide where the application answers.
"""

from __future__ import annotations

from typing import Any

from edray.config import load_config
from edray.serve.config import ServeConfig


def load(args: dict[str, Any]) -> ServeConfig:
    """The serve config named by builder arguments ``{"config": path, "set": [overrides...]}``.

    Raises:
        ConfigError: the file is missing or invalid, or an unknown argument was given.
    """
    from edray.config import ConfigError

    unknown = set(args) - {"config", "set"}
    if unknown:
        raise ConfigError(f"edray.serve.deploy:app takes `config` and `set` arguments, not {sorted(unknown)}")
    if not args.get("config"):
        raise ConfigError("edray.serve.deploy:app needs a `config` argument: a serve config file")
    overrides = args.get("set") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    return load_config(ServeConfig, args["config"], list(overrides), section="serve")


def app(args: dict[str, Any]) -> Any:
    """Build the bound application (student, its adapters and the teacher) from builder arguments."""
    from edray.serve.app import build_app
    from edray.serve.job import api_key_digest

    config = load(args)
    if not config.models:
        from edray.config import ConfigError

        raise ConfigError("models: at least one model must be served (the teacher may be external)")
    return build_app(config, api_key_digest(config))
