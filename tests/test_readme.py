"""The README's promises: its quick-start commands are the ones CI runs, and its usage runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quick_start_has_exactly_two_commands_and_ci_runs_both():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)]
    assert len(commands) == 2
    assert "refdyn check" in commands[0] and "pytest" in commands[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci_lines


def test_usage_example_runs():
    usage = code_blocks("python")[0]
    namespace = {}
    exec(compile(usage, "README usage", "exec"), namespace)
    assert namespace["grads"].grad_offset.shape == (1, 18, 8, 8)
