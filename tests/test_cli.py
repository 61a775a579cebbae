import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nftkit", *args], capture_output=True, text=True, timeout=120)


def test_recipe_list_and_show():
    out = _cli("recipe", "list")
    assert out.returncode == 0 and "image/fmnist_badnets" in out.stdout
    show = _cli("recipe", "show", "image/fmnist_badnets")
    assert show.returncode == 0 and show.stdout.startswith("# nftkit recipe run image/fmnist_badnets")


def test_errors_are_one_line_without_traceback():
    out = _cli("recipe", "run", "image/fmnist_badnets", "defense.stepz=3")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "unknown key 'defense.stepz'" in out.stderr
    missing = _cli("recipe", "run", "image/nope")
    assert missing.returncode == 2 and "unknown recipe 'image/nope'" in missing.stderr
