"""The hooks a synnav plugin may implement.

A plugin module (built-in or installed through the ``synnav`` entry-point group) marks its
functions with :data:`hookimpl`::

    from synnav_cli import hookimpl

    @hookimpl
    def register_backbones(register):
        register(MyBackbone(), aliases=("mine",))
"""

import pluggy

hookspec = pluggy.HookspecMarker("synnav")
hookimpl = pluggy.HookimplMarker("synnav")


@hookspec
def register_backbones(register):
    """Register backbones by calling ``register(backbone, aliases=(...))``.

    Registration must be cheap: build no model, load no weights, download nothing.
    """
