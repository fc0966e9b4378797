"""Built-in sub-commands, registered through the same hook third parties use."""
from .hookspecs import hookimpl


@hookimpl
def register_commands(register):
    from .chat import chat_command

    register(chat_command)

    from .evaluation.cli import bench

    register(bench)

    from .training.cli import train_command

    register(train_command)
