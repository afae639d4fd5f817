"""The README's set-up works as a new user types it (issue 16): clone, cd, venv, CPU-only torch,
and no command that leaves an untracked output in the checkout."""
import re
import subprocess

from .conftest import REPO


def _setup_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## Set-up"):text.index("## Tagging")]


def test_setup_says_clone_cd_venv_and_the_cpu_only_torch():
    setup = _setup_section()
    assert "git clone" in setup and "&& cd csra" in setup and "python3 -m venv .venv" in setup
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup and "nvidia" in setup


def test_readme_tag_outputs_inside_the_checkout_are_git_ignored():
    text = (REPO / "README.md").read_text()
    outs = {m for m in re.findall(r"csra tag .*?--out (\S+)", text) if m != "-"}
    inside = sorted(o for o in outs if not o.startswith(("~", "/", "$")))
    assert inside, "expected some relative outputs in the examples"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *inside], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert sorted(ignored) == inside
    first = re.search(r"csra tag .*?--out (\S+)", _setup_section()).group(1)
    assert first.startswith("~")  # the first command writes outside the repository
