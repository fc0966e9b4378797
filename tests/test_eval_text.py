"""Phrase similarity (offline all-MiniLM-L6-v2 and the lexical fallback) and the CLAIR judge."""
import os

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from sama_agent.evaluation.judge import ClairJudge, parse_judgement
from sama_agent.evaluation.similarity import LexicalOverlapSimilarity, MiniLMSimilarity, default_similarity, minilm_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_minilm_is_semantic_and_offline():
    similarity = MiniLMSimilarity()
    assert (minilm_model_dir() / "model.safetensors").exists()
    matrix = similarity.matrix(["a small dog", "the red car"], ["a puppy", "a red automobile", "a banana"])
    assert matrix.shape == (2, 3)
    assert matrix[0, 0] > 0.5 and matrix[1, 1] > 0.5  # synonyms match
    assert matrix[0, 2] < 0.5 and matrix[1, 0] < 0.5  # unrelated phrases do not
    assert similarity.matrix([], ["x"]).shape == (0, 1)
    assert default_similarity("auto").name == "all-MiniLM-L6-v2"


def test_lexical_fallback_is_named_and_not_semantic():
    similarity = default_similarity("lexical")
    assert isinstance(similarity, LexicalOverlapSimilarity) and "fallback" in similarity.name
    matrix = similarity.matrix(["the red kite", "a dog"], ["red kite", "a puppy"])
    assert matrix[0, 0] == 1.0 and matrix[1, 1] == 0.0  # stop words ignored; synonyms missed
    with pytest.raises(ValueError, match="minilm, lexical or auto"):
        default_similarity("bert")


def test_clair_judge_with_langchain_chat_models():
    judge = ClairJudge(FakeListChatModel(responses=['Sure. {"score": 85, "reason": "both describe a red kite"}']))
    result = judge.score(["a red kite flies"], ["a kite drifting in the sky"])
    assert result.score == pytest.approx(0.85) and result.reason == "both describe a red kite"
    prompt = judge.prompt(["cand"], ["ref"])[-1].content
    assert "- cand" in prompt and "- ref" in prompt and '"score"' in prompt
    # unparseable replies are retried, then reported as missing (None), never 0
    silent = ClairJudge(GenericFakeChatModel(messages=iter(AIMessage(t) for t in ["hmm", "no", "later", '{"score": 10}'])), attempts=3)
    missing = silent.score("a", "b")
    assert missing.score is None and "3 attempts" in missing.reason
    with pytest.raises(TypeError, match="LangChain chat model"):
        ClairJudge(lambda text: text)


@pytest.mark.parametrize(
    "reply,expected",
    [('{"score": 70, "reason": "ok"}', 0.7), ("Score: 40/100", 0.4), ("0.35", 0.35), ('{"score": 250}', 1.0), ("nothing", None)],
)
def test_parse_judgement(reply, expected):
    parsed = parse_judgement(reply)
    assert (parsed is None) if expected is None else parsed[0] == pytest.approx(expected)
