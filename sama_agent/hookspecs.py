"""Plugin hooks. Each gets a `register` callable; call it once per component."""
import pluggy

hookspec = pluggy.HookspecMarker("sama_agent")
hookimpl = pluggy.HookimplMarker("sama_agent")


@hookspec
def register_encoders(register):
    """register(EncoderClass): frames -> patch tokens (protocols.Encoder)."""


@hookspec
def register_aggregators(register):
    """register(AggregatorClass): spatio-temporal context aggregator (protocols.Aggregator)."""


@hookspec
def register_llms(register):
    """register(LanguageModelClass): causal LM adapter (protocols.LanguageModel)."""


@hookspec
def register_segmenters(register):
    """register(SegmenterClass): prompts -> mask tracks (protocols.Segmenter)."""


@hookspec
def register_tools(register):
    """register(factory): factory(toolkit) -> a LangChain BaseTool that may take mask handles."""


@hookspec
def register_commands(register):
    """register(click_command): an extra `sama-agent` sub-command."""
