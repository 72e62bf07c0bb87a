"""This reference app's job types: the built-ins (`echo`, `webhook.deliver`). A deployment of
your own puts its job modules here (or anywhere importable) and adds their blueprints:

    from jobqueue.builtins import default_registry
    from myapp.jobs import blueprint

    def registry():
        reg = default_registry()
        reg.add_blueprint(blueprint)
        return reg
"""

from __future__ import annotations

from jobqueue.builtins import default_registry
from jobqueue.registry import Registry


def registry() -> Registry:
    return default_registry()


# JOBQUEUE_REGISTRY=handlers:default_registry keeps working for deployments that named it.
__all__ = ["default_registry", "registry"]
