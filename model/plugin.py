"""Built-in SAMA components, registered through the same hooks third-party plugins use.

Entry point: `builtin-model = "sama_agent.model.plugin"` in the `sama_agent` group.
"""
from sama_agent.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    from .modeling.encoders import ENCODERS

    for encoder in ENCODERS:
        register(encoder)


@hookimpl
def register_aggregators(register):
    from .modeling.aggregator import AGGREGATORS

    for aggregator in AGGREGATORS:
        register(aggregator)


@hookimpl
def register_llms(register):
    from .modeling.llm import LLMS

    for llm in LLMS:
        register(llm)


@hookimpl
def register_segmenters(register):
    from .segmenter import Sam2Segmenter

    register(Sam2Segmenter)
