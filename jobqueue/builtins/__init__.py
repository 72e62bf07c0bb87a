"""Built-in job types. Each module defines a `blueprint`; `default_registry()` assembles them.

Apps add their own: `registry = default_registry(); registry.add_blueprint(my_blueprint)`.
"""

from __future__ import annotations

from jobqueue.registry import Registry


def default_registry() -> Registry:
    from . import echo, webhook

    return Registry([echo.blueprint, webhook.blueprint])
