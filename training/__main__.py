"""python -m sama_agent.training --config FILE [...]  (the same as `sama-agent train`; torchrun-friendly)."""
from .cli import train_command

if __name__ == "__main__":
    train_command(prog_name="python -m sama_agent.training")
