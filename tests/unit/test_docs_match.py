"""README.md and docs/*.md name only what exists: files of the tree, settings,
CONTRACT sections, CLI commands and options.

A rename that forgets the docs fails here rather than in a newcomer's hands.
Skipped when the tests run without a checkout next to them."""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import re
from typing import Iterator

from twisted.trial.unittest import TestCase

from imapsvc import cli
from imapsvc.settings_table import SETTINGS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Paths the docs name that no checkout holds: what a run writes, a pattern, an
# operator's own overlay, migrations cited by number.
NOT_IN_TREE = re.compile(r"^(demo/\.state(/|$)|schema/(NNNN_|\d{4}$))")
TREE_PATH = re.compile(
    r"(?<![\w./-])((?:imapsvc|tests|demo|bench|k8s|schema|twisted|docs|\.ci)/[\w./*{},-]*[\w*/}])"
)
SETTING = re.compile(r"\b((?:IMAPSVC|IMAP)_[A-Z0-9_]+)\b")
CONTRACT_REF = re.compile(r"CONTRACT section (\d+)", re.IGNORECASE)


def _docs() -> list[str]:
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _expand(path: str) -> list[str]:
    """``imap/{auth,fetch}_commands.py`` -> both names."""
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [x for part in m.group(1).split(",")
            for x in _expand(path[:m.start()] + part + path[m.end():])]


def _source_files() -> Iterator[str]:
    for top in ("imapsvc", "twisted", "demo", "tests", "bench", ".ci"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".py", ".sh")) or top == ".ci":
                    yield os.path.join(dirpath, name)


def _walk_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk_parsers(sub, f"{prefix} {name}".strip())


class DocsMatchTreeTests(TestCase):
    def setUp(self) -> None:
        if not os.path.exists(os.path.join(ROOT, "docs", "contract.md")):
            self.skipTest("no checkout docs/ next to the tests")

    def test_named_paths_exist(self) -> None:
        missing = []
        for doc in _docs():
            for m in TREE_PATH.finditer(_read(doc)):
                for path in _expand(m.group(1).rstrip("/.")):
                    if NOT_IN_TREE.match(path):
                        continue
                    if not glob.glob(os.path.join(ROOT, path)):
                        missing.append(f"{os.path.relpath(doc, ROOT)}: {path}")
        self.assertEqual(missing, [])

    def test_short_module_names_exist(self) -> None:
        """``folder/sync.py``, ``imap/{auth,fetch}_commands.py``, ``relay.py``:
        some file of the tree ends so. performance.md's history names the
        modules of its day and the benchmark kit's scripts."""
        tree = [os.path.relpath(p, ROOT) for p in _source_files()] + os.listdir(ROOT)
        missing = []
        for doc in _docs():
            if doc.endswith("performance.md"):
                continue
            for m in re.finditer(r"(?<![\w./-])([\w/{},*-]+\.py)\b", _read(doc)):
                for name in _expand(m.group(1)):
                    if not any(fnmatch.fnmatch(p, name) or fnmatch.fnmatch(p, "*/" + name)
                               for p in tree):
                        missing.append(f"{os.path.relpath(doc, ROOT)}: {name}")
        self.assertEqual(missing, [])

    def test_named_settings_exist(self) -> None:
        known = {s.env for s in SETTINGS}
        code = "\n".join(_read(p) for p in _source_files() if not p.endswith(".pyc"))
        missing = []
        for doc in _docs():
            for name in sorted(set(SETTING.findall(_read(doc)))):
                if name not in known and not re.search(rf"\b{name}\b", code):
                    missing.append(f"{os.path.relpath(doc, ROOT)}: {name}")
        # A shell variable of an example is no setting.
        self.assertEqual([m for m in missing if not m.endswith(": IMAP_PW")], [])

    def test_contract_sections_resolve(self) -> None:
        sections = set(re.findall(r"^## (\d+)\. ", _read(os.path.join(ROOT, "docs", "contract.md")),
                                  re.MULTILINE))
        self.assertTrue(sections)
        bad = []
        for path in list(_source_files()) + _docs():
            if path.endswith("test_docs_match.py"):
                continue
            for n in CONTRACT_REF.findall(_read(path)):
                if n not in sections:
                    bad.append(f"{os.path.relpath(path, ROOT)}: section {n}")
        self.assertEqual(bad, [])

    def test_cli_md_covers_every_command_and_option(self) -> None:
        text = _read(os.path.join(ROOT, "docs", "cli.md"))
        headings = "\n".join(line for line in text.splitlines() if line.startswith("### "))
        missing = []
        for name, parser in _walk_parsers(cli.build_parser()):
            has_actions = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
            if name and not has_actions and name not in headings:
                missing.append(f"command {name!r}")
            for action in parser._actions:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help" and flag not in text:
                        missing.append(f"{name or 'global'} {flag}")
        self.assertEqual(missing, [])

    def test_cli_md_exit_statuses_are_the_clis(self) -> None:
        text = _read(os.path.join(ROOT, "docs", "cli.md"))
        table = text[text.index("## Exit statuses"):]
        documented = set(re.findall(r"^\| (\d+) \|", table, re.MULTILINE))
        self.assertEqual(documented, {"0", "1", "2", "130"})
        self.assertEqual(cli.USAGE, 2)
