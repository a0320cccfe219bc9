"""Every code block of README.md and docs/*.md runs as written.

A block's fence names its language. ``bash`` blocks run in bash with ``-e -o pipefail`` (every
command must succeed), ``python`` blocks in a fresh interpreter; any other language is not run
(``text``: a synopsis or an output sample; ``toml``: a file, see below). Each block runs in a
fresh folder holding a copy of the repository's ``examples/`` (the pages' commands run from a
checkout's root), with ``relaycomp`` and ``python`` of this interpreter first on ``PATH``.

An HTML comment on the line before a fence says more, comma-separated:

* ``<!-- slow -->``: the block takes long (a cross-compiled bundle, tuning, a training run) and
  runs only with ``-m slow``;
* ``<!-- setup -->``: a page's setup: it runs, in the same folder, before every other block of
  its page (e.g. the training data the distillation commands read);
* ``<!-- needs: TOOL ... -->``: skipped unless these programs are on ``PATH``;
* ``<!-- checkout -->``: runs in the checkout's root itself (``pip install -e .``);
* ``<!-- ci -->``: run by ``.ci/run`` rather than here: the test command, which runs this suite.

A ``toml`` block whose first line names a file (``# my-board.toml``) is written into the folder
of every block of its page. Cheap checks on every block, slow ones included, run by default:
each ``relaycomp`` command line parses with relaycomp's own argument parser (an option that does
not exist fails here), bash blocks pass ``bash -n`` and python blocks compile.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash", "python"}
LANGUAGES = RUN | {"text", "toml"}
MARKS = {"slow", "setup", "checkout", "ci"}
FENCE = re.compile(r"^(\s*)```(.*)$")
TOML_NAME = re.compile(r"^# ([\w.-]+\.toml)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, the line of its opening fence, language, code, marks."""

    page: Path
    line: int
    language: str
    code: str
    marks: frozenset[str]
    needs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _marks(comment_line: str) -> tuple[frozenset[str], tuple[str, ...]]:
    found = re.fullmatch(r"<!--(.*)-->", comment_line.strip())
    if not found:
        return frozenset(), ()
    marks, needs = set(), ()
    for item in (part.strip() for part in found.group(1).split(",")):
        if item.startswith("needs:"):
            needs = tuple(item.removeprefix("needs:").split())
        elif item:
            marks.add(item)
    return frozenset(marks), needs


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, in order."""
    lines = page.read_text().splitlines()
    found, number = [], 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        end = next((i for i in range(number + 1, len(lines)) if lines[i].strip() == "```"),
                   None)
        assert end is not None, f"{page.name}:{number + 1}: a fence that is never closed"
        marks, needs = _marks(lines[number - 1]) if number else (frozenset(), ())
        found.append(Block(page, number + 1, opening.group(2).strip(),
                           "\n".join(lines[number + 1:end]) + "\n", marks, needs))
        assert not opening.group(1), f"{page.name}:{number + 1}: an indented fence"
        number = end + 1
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _runnable(block: Block) -> bool:
    return block.language in RUN and "ci" not in block.marks


def _param(block: Block):
    marks = [pytest.mark.slow] if "slow" in block.marks else []
    return pytest.param(block, id=block.name, marks=marks)


# ---- cheap checks on every block ------------------------------------------------------------

def test_every_block_says_its_language_and_its_marks_are_known():
    assert BLOCKS, "no code blocks found"
    for block in BLOCKS:
        assert block.language in LANGUAGES, (
            f"{block.name}: fence the block as one of {sorted(LANGUAGES)}, "
            f"not {block.language!r} (text: not run)")
        assert block.marks <= MARKS, f"{block.name}: unknown marks {block.marks - MARKS}"


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links {target}: no such page"


def test_the_quickstart_is_the_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    quickstart = text[text.index("## Quickstart\n"):text.index("\n## ", text.index("## Quickstart"))]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, re.DOTALL)
    assert commands == ["pip install -e . && relaycomp demo",
                        'pip install -e ".[test]" && python -m pytest -q']
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1], ".ci/run must run the README's test command exactly"


def _command_lines(code: str) -> list[list[str]]:
    """The ``relaycomp`` commands of a bash block: continuation lines joined, here-documents
    skipped, split at ``&&``, ``;``, ``|`` and ``&``, redirections and leading ``NAME=value``
    assignments dropped."""
    commands, heredoc_end = [], None
    for line in code.replace("\\\n", " ").splitlines():
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        current: list[str] = []
        for word in [*lexer, ";"]:
            if set(word) <= set(";&|"):
                commands.append(current)
                current = []
            else:
                current.append(word)
    found = []
    for command in commands:
        words = []
        for word in command:
            if words and words[-1] in (">", ">>", "<", "<<"):
                words.pop()  # a redirection and its file
            else:
                words.append(word)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words and words[0] == "relaycomp":
            found.append(words[1:])
    return found


COMMAND_LINES = [pytest.param(block, words, id=f"{block.name}:{' '.join(words[:2])}")
                 for block in BLOCKS if block.language == "bash"
                 for words in _command_lines(block.code)]


@pytest.mark.parametrize(("block", "words"), COMMAND_LINES)
def test_every_relaycomp_command_line_parses(block, words, capsys):
    from relaycomp.cli.main import build_parser

    try:
        build_parser().parse_args(words)
    except SystemExit as exit_:  # --help, --version: exit 0; a bad option: exit 2
        assert exit_.code == 0, f"{block.name}: relaycomp {' '.join(words)}\n" \
                                f"{capsys.readouterr().err}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in RUN], ids=lambda b: b.name)
def test_every_block_is_valid_code(block, tmp_path):
    if block.language == "python":
        compile(block.code, block.name, "exec")
        return
    script = tmp_path / "block.sh"
    script.write_text(block.code)
    checked = subprocess.run(["bash", "-n", script], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, f"{block.name}: {checked.stderr}"


def test_the_command_lines_are_found():
    """The parser above sees the commands a reader sees (else it checks nothing)."""
    lines = _command_lines('X=1 relaycomp targets | grep a && relaycomp compile m.onnx \\\n'
                           '    -o m.so > log.txt &\nrelaycomp run m.so  # a comment\n')
    assert lines == [["targets"], ["compile", "m.onnx", "-o", "m.so"], ["run", "m.so"]]


# ---- running them ---------------------------------------------------------------------------

def _prepare(folder: Path, block: Block) -> None:
    shutil.copytree(ROOT / "examples", folder / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for other in BLOCKS:
        if other.page != block.page or other.language != "toml":
            continue
        name = TOML_NAME.match(other.code.splitlines()[0])
        if name:
            (folder / name.group(1)).write_text(other.code)


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # this interpreter's relaycomp and python
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def _execute(block: Block, folder: Path, timeout: float) -> None:
    script = folder / (".block.sh" if block.language == "bash" else ".block.py")
    script.write_text(block.code)
    command = (["bash", "-e", "-o", "pipefail", str(script)] if block.language == "bash"
               else [sys.executable, str(script)])
    # output to files, not pipes: a helper process the block leaves behind (a tracker, a TVM
    # worker) would hold a pipe open; its own session, ended with it, takes those along
    with open(folder / ".stdout", "w+") as stdout, open(folder / ".stderr", "w+") as stderr:
        process = subprocess.Popen(command, cwd=folder, env=_environment(), stdout=stdout,
                                   stderr=stderr, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read()[-3000:], stderr.read()[-3000:]
    for leftover in (script, folder / ".stdout", folder / ".stderr"):
        leftover.unlink()
    assert process.returncode == 0, (f"{block.name} failed (exit {process.returncode}; "
                                     f"killed after {timeout:g} s if negative):\n{block.code}"
                                     f"\n--- stdout\n{out}\n--- stderr\n{err}")


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if _runnable(b)])
def test_every_block_runs_as_written(block, tmp_path):
    missing = [tool for tool in block.needs if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    timeout = 1800 if "slow" in block.marks else 300
    if "checkout" in block.marks:
        demo_existed = (ROOT / "relaycomp-demo").exists()
        try:
            _execute(block, ROOT, timeout)
        finally:
            if not demo_existed:
                shutil.rmtree(ROOT / "relaycomp-demo", ignore_errors=True)
        return
    _prepare(tmp_path, block)
    if "setup" not in block.marks:
        for setup in (b for b in BLOCKS if b.page == block.page and "setup" in b.marks):
            _execute(setup, tmp_path, timeout)
    _execute(block, tmp_path, timeout)
