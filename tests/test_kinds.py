"""The table of plugin kinds: every hook is a kind, and the registries, the listing and a
run's resolution follow the table, so a new kind is one entry and its hookspec."""

import json
import textwrap

import pluggy

from ganflow import hookspecs, kinds, plugins as loading
from ganflow.plugins import hook_names, load_plugins

from conftest import write_plugin


def test_every_hook_is_a_kind_and_every_kind_a_hook(plugins):
    assert sorted(kind.hook for kind in kinds.KINDS) == hook_names()
    for kind in kinds.KINDS:
        assert getattr(plugins, kind.attribute).kind == kind.name


def test_ganflow_plugins_lists_the_kinds_in_the_table_s_order(cli):
    listed = json.loads(cli("plugins", "--json").stdout)
    assert list(listed) == [kind.heading for kind in kinds.KINDS]
    assert "minimax" in {row["name"] for row in listed["losses"]}


def test_a_new_kind_is_one_table_entry_and_its_hookspec(monkeypatch, tmp_path, cli):
    @pluggy.HookspecMarker("ganflow")
    def ganflow_register_widgets(register):
        """Register widgets: ``register(name, widget, description="")``."""

    monkeypatch.setattr(hookspecs, "ganflow_register_widgets", ganflow_register_widgets,
                        raising=False)
    widget = kinds.Kind("widget", "ganflow_register_widgets", "widgets",
                        kinds._callable("callable"))
    monkeypatch.setattr(kinds, "KINDS", (*kinds.KINDS, widget))
    monkeypatch.setattr(loading, "KINDS", kinds.KINDS)
    monkeypatch.setattr(loading, "BY_NAME", {**kinds.BY_NAME, "widget": widget})
    path = write_plugin(tmp_path / "widgets.py", textwrap.dedent("""
        import ganflow

        @ganflow.hookimpl
        def ganflow_register_widgets(register):
            register("spinner", lambda: "spin", "turns round")
    """))
    loaded = load_plugins((path,))
    assert [entry.name for entry in loaded.widgets] == ["spinner"]
    assert loaded.choose("widget", "spinner", "--widget").build()() == "spin"
    listed = json.loads(cli("plugins", "--plugin-module", path, "--json").stdout)
    assert listed["widgets"] == [{"name": "spinner", "plugin": path,
                                  "description": "turns round"}]
