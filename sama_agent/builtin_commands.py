"""Built-in sub-commands, registered through the same hook third parties use."""
from .hookspecs import hookimpl


@hookimpl
def register_commands(register):
    pass
