"""Every ```python block of the docs (``docs/**/*.md``) and of the README runs as written.

Each block is a complete program: it runs alone, in a fresh interpreter, in an empty temporary
directory, and must exit 0. The conventions the pages follow, checked here:

- A ```text block titled ``Output`` right after a python block (blank lines and the ``</div>``
  closing a side-by-side grid may stand between) is that block's standard output, exactly (the
  trailing blanks of each line aside). Titled ``Output, in some order``, it is the same lines in
  any order (workers that print at the same time). After a grid of blocks
  (``<div class="grid" markdown>``), it is the output of every python block in the grid.
- A ```text block titled ``Warning, on stderr`` is text that the block's standard error must
  contain (whitespace runs compared as one space: the page wraps it).
- A python block that cannot run here is marked by an HTML comment on the line above it,
  ``<!-- not run: REASON -->``. Such blocks are few, and each gives its reason.

Most blocks spend their time starting interpreters and waiting on them, so the selected blocks
run a few at a time, started when the module's first block test asks for its result (each test
then checks its own block's outcome).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, WATCHDOG

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`]*)$")
TITLE = re.compile(r'title="(?P<title>[^"]*)"')
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.*\S) -->$")
OUTPUT_TITLES = ("Output", "Output, in some order", "Warning, on stderr")
# Blocks that may be marked `not run`, at most: a page is better served by examples that run.
MAX_NOT_RUN = 3
# Blocks run at once.
PARALLEL = 4


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    title: str | None
    code: str
    not_run: str | None = None
    grid: int | None = None  # blocks of one side-by-side grid share a number
    expect: list[Block] = field(default_factory=list)  # output blocks that apply to this one

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of a Markdown page, with output blocks attached to the python blocks
    they belong to."""
    page = path.relative_to(root).as_posix()
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    grid: int | None = None
    grids = 0
    # The python block (or grid of them) an output block here would belong to.
    last_python: Block | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m is None:
            stripped = line.strip()
            if stripped.startswith('<div class="grid"'):
                grids += 1
                grid = grids
                last_python = None
            elif stripped == "</div>":
                grid = None
            elif stripped and not NOT_RUN.match(stripped):
                last_python = None  # prose between: what follows is not its output
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        lang = info.split()[0] if info else ""
        title_match = TITLE.search(info)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:])
            i += 1
        assert i < len(lines), f"{page}:{start + 1}: unclosed code fence"
        i += 1
        previous = next(
            (lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), ""
        )
        marker = NOT_RUN.match(previous)
        block = Block(
            page=page,
            line=start + 1,
            lang=lang,
            title=title_match["title"] if title_match else None,
            code="\n".join(body) + "\n",
            not_run=marker["reason"] if marker else None,
            grid=grid,
        )
        blocks.append(block)
        if lang == "python":
            last_python = block
        elif block.title in OUTPUT_TITLES and last_python is not None:
            targets = [b for b in blocks if b.lang == "python"]
            if last_python.grid is not None:
                targets = [b for b in targets if b.grid == last_python.grid]
            else:
                targets = [last_python]
            for target in targets:
                target.expect.append(block)
        else:
            last_python = None
    return blocks


BLOCKS = [block for path in PAGES for block in parse(path)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
RUNNABLE = [b for b in PYTHON if b.not_run is None]


def test_every_page_is_found_and_most_have_examples() -> None:
    pages = {b.page for b in PYTHON}
    assert "README.md" in pages
    assert "docs/index.md" in pages
    assert len(pages) >= 8, pages
    assert len(RUNNABLE) >= 30


def test_output_blocks_belong_to_a_python_block() -> None:
    attached = {id(out) for b in PYTHON for out in b.expect}
    stray = [b.id for b in BLOCKS if b.title in OUTPUT_TITLES and id(b) not in attached]
    assert not stray, f"output blocks with no python block right above them: {stray}"
    assert sum(1 for b in PYTHON if b.expect) >= 15


def test_blocks_not_run_are_few_and_say_why() -> None:
    not_run = [b for b in BLOCKS if b.not_run is not None]
    assert all(b.lang == "python" for b in not_run), [b.id for b in not_run]
    assert len(not_run) <= MAX_NOT_RUN, [(b.id, b.not_run) for b in not_run]
    for b in not_run:
        assert len((b.not_run or "").split()) >= 3, f"{b.id}: give a reason, not a word"


def test_the_readmes_links_lead_somewhere() -> None:
    """The README links the docs pages by path (the site's own links are checked by
    ``mkdocs build --strict``): each relative link names a file of the checkout."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert not pages - set(local), f"docs pages the README does not link: {pages - set(local)}"


def test_the_parser_reads_the_conventions(tmp_path: Path) -> None:
    """The conventions above, on a page made here: a check of the checker."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n"
        '<div class="grid" markdown>\n\n'
        '```python title="a"\nprint(1)\n```\n\n'
        '```python title="b"\nprint(1)\n```\n\n'
        "</div>\n\n"
        '```text title="Output"\n1\n```\n\n'
        "<!-- not run: it needs a scheduler -->\n"
        "```python\nconnect()\n```\n\n"
        "Prose between.\n\n"
        '```text title="Output"\nnot attached\n```\n\n'
        "- a list item:\n\n"
        "    ```python\n    print(2)\n    ```\n\n"
        '    ```text title="Output, in some order"\n    2\n    ```\n'
    )
    blocks = parse(page, root=tmp_path)
    a, b, out, skipped, stray, nested, nested_out = blocks
    assert a.grid == b.grid is not None
    assert a.expect == [out] and b.expect == [out]
    assert skipped.not_run == "it needs a scheduler" and not skipped.expect
    assert stray.title == "Output" and all(stray not in x.expect for x in blocks)
    assert nested.code == "print(2)\n" and nested.expect == [nested_out]
    assert nested_out.code == "2\n"


def test_the_output_check_catches_what_differs(tmp_path: Path) -> None:
    """The comparisons, on blocks made here: a check of the checker."""
    page = tmp_path / "page.md"
    page.write_text(
        '```python\nx\n```\n\n```text title="Output"\na\nb\n```\n\n'
        '```python\nx\n```\n\n```text title="Output, in some order"\na\nb\n```\n\n'
        '```python\nx\n```\n\n```text title="Warning, on stderr"\nsaid\nthis\n```\n'
    )
    exact, _, any_order, _, warns, _ = parse(page, root=tmp_path)
    _check(exact, 0, "a  \nb\n\n", "")
    for code, out in ((0, "b\na\n"), (0, "a\n"), (0, "a\nb\nc\n"), (1, "a\nb\n")):
        with pytest.raises(AssertionError):
            _check(exact, code, out, "")
    _check(any_order, 0, "b\na\n", "")
    with pytest.raises(AssertionError):
        _check(any_order, 0, "a\na\n", "")
    _check(warns, 0, "", "file.py:3: UserWarning: said   this\n")
    with pytest.raises(AssertionError):
        _check(warns, 0, "said this", "")  # on stdout, not stderr


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


class Hung(Exception):
    """A block ran past the watchdog (its process group was killed)."""


def _env() -> dict[str, str]:
    """A user's environment, as the pages assume it: the ``process`` backend by default (the
    default where the GIL is on; a free-threaded interpreter would pick ``thread``, which cannot
    kill a task or time one out), and no Dask scheduler named (a Dask example starts its own)."""
    env = dict(os.environ)
    env["GILFREE_BACKEND"] = "process"
    env.pop("GILFREE_DASK_ADDRESS", None)
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        # What docs/backends.md tells a user of a free-threaded CPython to do for a Dask
        # cluster of their own: its profiler is not safe without the GIL.
        env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
    return env


def _run(code: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Runs ``code`` as a script in ``cwd``; kills its whole process group on the watchdog."""
    script = cwd / "example.py"
    script.write_text(code)
    with subprocess.Popen(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung block goes with every process it started
    ) as proc:
        try:
            out, err = proc.communicate(timeout=WATCHDOG)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise Hung(f"hung for {WATCHDOG} s\nstdout:\n{out}\nstderr:\n{err}") from None
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[tuple[int, str, str]]]]:
    """The run of every block selected in this session, in test order, PARALLEL at a time."""
    selected = [
        block
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == test_block_runs_and_prints_what_the_page_shows.__name__
        and isinstance(block := item.callspec.params["block"], Block)
    ]
    # The environment is copied here, once: pytest sets and unsets PYTEST_CURRENT_TEST in
    # os.environ as tests run, and copying it from a pool thread meanwhile can fail (a key seen,
    # then gone; seen on free-threaded CPython).
    env = _env()
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="docs-block") as pool:
        yield {
            b.id: pool.submit(_run, b.code, tmp_path_factory.mktemp("block"), env) for b in selected
        }


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block_runs_and_prints_what_the_page_shows(
    block: Block, outcomes: dict[str, Future[tuple[int, str, str]]]
) -> None:
    try:
        code, out, err = outcomes[block.id].result()
    except Hung as exc:
        pytest.fail(f"{block.id}: {exc}")
    _check(block, code, out, err)


def _check(block: Block, code: int, out: str, err: str) -> None:
    """A block's run matches its page: exit status 0, and the output blocks that follow it."""
    assert code == 0, f"{block.id} exited {code}\nstdout:\n{out}\nstderr:\n{err}"
    for expected in block.expect:
        where = f"{block.id}: the {expected.title!r} block at line {expected.line}"
        if expected.title == "Output":
            assert _lines(out) == _lines(expected.code), where
        elif expected.title == "Output, in some order":
            assert sorted(_lines(out)) == sorted(_lines(expected.code)), where
        else:
            assert " ".join(expected.code.split()) in " ".join(err.split()), where
