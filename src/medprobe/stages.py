"""The stage packages that are also the Python API's functions: `medprobe.probe(...)` calls
`medprobe.api.probe(...)` while `medprobe.probe.runner` stays the package's module (and likewise extract,
finetune and report). A package named like a function cannot be shadowed by it without breaking
`import medprobe.probe.runner`, mock paths and pickling, so the package itself becomes callable."""

from __future__ import annotations

import sys
import types


class CallableStage(types.ModuleType):
    """A stage package whose call is the API function of the same name (medprobe/api.py, lazily imported,
    so importing the package stays as cheap as before)."""

    def __call__(self, *args, **kwargs):
        return self.api_function()(*args, **kwargs)

    def api_function(self):
        """The medprobe.api function this package stands for (its signature and docstring)."""
        from medprobe import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])


def make_callable(name: str) -> None:
    """Called at the end of a stage package's __init__ with its __name__."""
    sys.modules[name].__class__ = CallableStage
