"""The example agent of docs/agent-example.md: a langchain-core chat model that emits
tool calls drives the real tools over a real model; every step is checked."""
import numpy as np
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from session_helpers import SQUARE_QUESTION, square_clip_mp4, one_torch_thread, trained_model_dir  # noqa: F401 (fixture)
from sama_agent.masks import MaskStore
from sama_agent.regions import parse_region
from sama_agent.tools import sama_toolkit


def run_agent(model, tools, messages, max_steps=8):
    """Call the model on the conversation `messages`; run every tool call it makes; append the
    results; stop at a plain answer."""
    for _ in range(max_steps):
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(tools[call["name"]].invoke(call))
    return messages


def scripted_agent(messages, video):
    """What a tool-calling LLM would decide, step by step, reading the tool results so far."""
    yield AIMessage("", tool_calls=[{"id": "c1", "name": "sama_ground", "args": {"video": video, "question": SQUARE_QUESTION}}])
    grounded = messages[-1].artifact
    handle = grounded["handles"][0]
    # a mistake an LLM might make: a made-up handle. The tool answers with an error message.
    yield AIMessage("", tool_calls=[{"id": "c2", "name": "mask_info", "args": {"handle": "mask-ffffffffffff"}}])
    yield AIMessage("", tool_calls=[{"id": "c3", "name": "mask_info", "args": {"handle": handle}},
                                    {"id": "c4", "name": "mask_to_region", "args": {"handle": handle}}])
    info, region = messages[-2].artifact, messages[-1].content
    yield AIMessage("", tool_calls=[{"id": "c5", "name": "sama_ground",
                                     "args": {"session_id": grounded["session_id"], "question": "what is <mask> doing ?",
                                              "regions": [region]}}])
    follow_up = messages[-1].artifact
    yield AIMessage("", tool_calls=[{"id": "c6", "name": "mask_export",
                                     "args": {"handle": handle, "format": "overlay", "name": "square"}}])
    yield AIMessage(f"{follow_up['text']} (mean area {info['mean_area']} px on "
                    f"{len(info['frames_present'])} frames; overlays: {len(messages[-1].artifact['paths'])} images)")


def test_a_tool_calling_agent_grounds_measures_and_follows_up(tmp_path):
    video, _, masks = square_clip_mp4(tmp_path / "square.mp4")
    store = MaskStore(tmp_path / "agent-session")
    tools = {tool.name: tool for tool in sama_toolkit(store=store, model=trained_model_dir())}
    messages = [HumanMessage("Find the red square and tell me what it does.")]
    model = GenericFakeChatModel(messages=scripted_agent(messages, str(video)))
    run_agent(model, tools, messages)

    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.name for m in results] == ["sama_ground", "mask_info", "mask_info", "mask_to_region", "sama_ground", "mask_export"]
    assert [m.tool_call_id for m in results] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert results[1].status == "error" and "unknown mask handle" in results[1].content
    handle = results[0].artifact["handles"][0]
    assert results[2].artifact["handle"] == handle
    region = parse_region(results[3].content)
    assert region.mask_ref == handle
    assert "moves right" in results[4].artifact["text"]
    assert results[4].artifact["turn"] == 2  # same session, same conversation
    overlays = results[5].artifact["paths"]
    assert len(overlays) == len(masks) and all(path.startswith(str(store.session_dir)) for path in overlays)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "moves right" in final.content and f"{len(masks)} images" in final.content
    areas = [row["area"] for row in results[2].artifact["per_frame"]]
    assert results[2].artifact["mean_area"] == round(float(np.mean([a for a in areas if a])), 1)


def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    """docs/agent-example.md's code block, executed as written (with the tests' model as the default)."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "agent-example.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]  # the agent loop
    monkeypatch.setenv("SAMA_AGENT_MODEL", str(trained_model_dir()))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "agent-example.md", "exec"), namespace)
    messages = namespace["messages"]
    assert [m.name for m in messages if isinstance(m, ToolMessage)] == ["sama_ground", "mask_info", "mask_to_region", "sama_ground"]
    assert all(m.status == "success" for m in messages if isinstance(m, ToolMessage))
    assert capsys.readouterr().out.strip() == messages[-1].content
    assert (tmp_path / "agent-session" / "masks").is_dir()
