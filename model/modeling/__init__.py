"""Model modules: SAM2 grounding (sam2_*), encoders, aggregator, LLM adapter, SamaModel.

Import the submodule you need (e.g. `sama_agent.model.modeling.sam2_model`);
nothing heavy is imported here.
"""
