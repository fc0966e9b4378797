"""The plugin host with real distributions installed from tests/plugin_dists."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sama_agent.plugins import Registry
from sama_agent.testing import SegmenterConformance

DISTS = Path(__file__).parent / "plugin_dists"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The three test distributions, pip-installed into their own site folder."""
    site = tmp_path_factory.mktemp("site")
    for name in ("colour_segmenter", "broken_import", "bad_protocol"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(DISTS / name)],
            check=True,
            capture_output=True,
        )
    return site


def run_cli(site, *args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("SAMA_AGENT_PLUGINS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "sama_agent.cli", *args], capture_output=True, text=True, env=env)


def test_plugins_lists_builtins_and_an_installed_plugin(plugin_site):
    result = run_cli(plugin_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    rows = {(c["kind"], c["name"]): c for c in listing["components"]}
    colour = rows[("segmenter", "colour")]
    assert colour["distribution"] == "sama-test-colour-segmenter" and colour["version"] == "0.3.1"
    assert ("command", "colour-hello") in rows
    builtin = [c for c in listing["components"] if c["distribution"] == "sama-agent"]
    assert builtin, "built-in components come from the sama-agent distribution's own entry points"


def test_broken_plugins_are_reported_by_distribution_and_skipped(plugin_site):
    result = run_cli(plugin_site, "plugins")
    assert result.returncode == 0
    assert "colour" in result.stdout  # the others keep working
    err = result.stderr
    assert "sama-test-broken-import" in err and "ImportError" in err and "needs a library that is not installed" in err
    assert "sama-test-bad-protocol" in err and "lasers" in err and "lacks method 'propagate()'" in err
    assert "prompt_kinds must be a non-empty subset" in err
    assert "lasers" not in result.stdout


def test_env_var_restricts_which_entry_points_load(plugin_site):
    result = run_cli(plugin_site, "plugins", "--json", env_extra={"SAMA_AGENT_PLUGINS": "sama-test-colour-segmenter"})
    listing = json.loads(result.stdout)
    assert {c["distribution"] for c in listing["components"]} == {"sama-test-colour-segmenter"}
    assert listing["failures"] == []
    none = json.loads(run_cli(plugin_site, "plugins", "--json", env_extra={"SAMA_AGENT_PLUGINS": ""}).stdout)
    assert none["components"] == []


def test_plugin_commands_join_the_cli(plugin_site):
    result = run_cli(plugin_site, "colour-hello")
    assert result.returncode == 0 and "hello from the colour plugin" in result.stdout


def test_hooks_that_raise_and_duplicate_names_are_reported():
    from sama_agent.hookspecs import hookimpl

    class Raising:
        @hookimpl
        def register_encoders(register):
            raise RuntimeError("boom")

    class Segs:
        class Copy:
            name = "copy"
            prompt_kinds = frozenset({"box"})

            def propagate(self, video, prompts, frames=None):
                yield from ()

            def segment(self, video, prompts, frames=None):
                return {}

        @hookimpl
        def register_segmenters(register):
            register(Segs.Copy)

    registry = Registry()
    registry.add_plugin(Raising, "raising", "dist-a", "1.0")
    registry.add_plugin(Segs, "segs", "dist-b", "1.0")
    registry.add_plugin(type("Segs2", (), {"register_segmenters": Segs.register_segmenters}), "segs2", "dist-c", "1.0")
    messages = [str(f) for f in registry.failures]
    assert any("dist-a" in m and "register_encoders raised RuntimeError: boom" in m for m in messages)
    assert any("dist-c" in m and "already taken by 'dist-b'" in m for m in messages)
    assert registry.get("segmenter", "copy").distribution == "dist-b"
    with pytest.raises(Exception, match="no segmenter named 'nope'. Available: copy"):
        registry.get("segmenter", "nope")


class TestColourPluginConformance(SegmenterConformance):
    """The conformance kit, run the way a third party would on its own segmenter."""

    @pytest.fixture
    def segmenter(self, plugin_site, monkeypatch):
        monkeypatch.syspath_prepend(str(plugin_site))
        from sama_colour_segmenter import ColourSegmenter

        return ColourSegmenter()
