"""The test lab (vagrant/, issue 23) boots no VM here: CI has none. What can be checked without one:
the Vagrantfile validates (``vagrant validate``, with the vagrant-libvirt provider loaded, in both of
its settings: a workstation's downloaded box, and `make lab`'s local box under TCG), and the lab's shell
scripts (the box recipe, lab.sh, the checks run inside the VMs) parse (``bash -n``). ``make test``
installs vagrant and vagrant-libvirt (Debian's packages, no box, no daemon)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(REPO, "vagrant")
SCRIPTS = sorted(
    [os.path.join(LAB, "lab.sh"), os.path.join(LAB, "box", "build.sh"), *glob.glob(os.path.join(LAB, "checks", "*.sh"))]
)
SETTINGS = {
    "workstation": {},
    "make-lab": {"STRATA_LAB_BOX": "strata/bookworm", "STRATA_LAB_TCG": "1", "STRATA_LAB_POOL": "strata-lab"},
}


def _vagrant(args: list[str], cwd: str, home: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed (make test installs vagrant and vagrant-libvirt)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_LAB_", "VAGRANT_"))}
    return subprocess.run(
        [vagrant, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "VAGRANT_HOME": home, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1", **env},
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, LAB))
def test_the_labs_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_lab_has_its_box_recipe_and_checks():
    assert [os.path.relpath(p, LAB) for p in SCRIPTS] == [
        "box/build.sh",
        "checks/rootless.sh",
        "checks/two-hosts.sh",
        "lab.sh",
    ]


def test_vagrant_has_the_libvirt_provider(tmp_path):
    result = _vagrant(["plugin", "list"], LAB, str(tmp_path / "home"), {})
    assert result.returncode == 0 and "vagrant-libvirt" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("settings", SETTINGS, ids=list(SETTINGS))
def test_the_vagrantfile_validates(settings, tmp_path):
    result = _vagrant(["validate"], LAB, str(tmp_path / "home"), SETTINGS[settings])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout


def test_validation_catches_a_libvirt_setting_that_does_not_exist(tmp_path):
    """So that the validation above is one: vagrant-libvirt refuses an option it does not have."""
    with open(os.path.join(LAB, "Vagrantfile")) as f:
        text = f.read()
    anchor = "    v.cpus = 2\n"
    assert text.count(anchor) >= 1
    bad = tmp_path / "lab"
    bad.mkdir()
    (bad / "Vagrantfile").write_text(text.replace(anchor, anchor + "    v.no_such_setting = 1\n", 1))
    result = _vagrant(["validate"], str(bad), str(tmp_path / "home"), SETTINGS["make-lab"])
    assert result.returncode != 0
    assert "no_such_setting" in result.stdout + result.stderr
