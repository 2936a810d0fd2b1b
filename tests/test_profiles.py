"""How Snakemake finds kmap's profiles: `snakemake --profile slurm` as typed from the repository root, the
workflow profile's settings under any profile, and a site's own `slurm` profile (Snakemake's real resolution:
``snakemake.cli.parse_args``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.workflow import REPO, copy_workflow, local_env, snakemake

SITE = {
    "executor": "slurm",
    "jobs": 7,
    "rerun-triggers": ["mtime"],
    "default-resources": {"slurm_account": "siteacct", "slurm_partition": "sitepart"},
}


def _parse(argv: list[str]):
    from snakemake.cli import parse_args

    return parse_args(argv)[1]


def _site_home(home: Path) -> Path:
    profile = home / ".config" / "snakemake" / "slurm"
    profile.mkdir(parents=True)
    (profile / "config.yaml").write_text(yaml.safe_dump(SITE))
    return profile


def _kmap_settings_hold(args) -> None:
    """The workflow profile's settings: rerun triggers without `code`, incomplete jobs redone, failed logs shown."""
    assert {t.name for t in args.rerun_triggers} == {"MTIME", "PARAMS", "INPUT", "SOFTWARE_ENV"}
    assert args.rerun_incomplete and args.show_failed_logs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home: no user profile (platformdirs reads HOME and XDG_CONFIG_HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.mark.parametrize("profile", ["slurm", "profiles/slurm"])
def test_slurm_profile_as_typed_from_the_root(home: Path, monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    monkeypatch.chdir(REPO)
    args = _parse(["--profile", profile, "-n"])
    assert args.executor == "slurm" and args.jobs == 100 and args.latency_wait == 60
    assert args.profile == [profile]
    _kmap_settings_hold(args)
    # kmap's slurm profile pins no partition (the config's cluster: routes jobs) and sets no cpus_per_task (the
    # plugin then asks --cpus-per-task = the job's threads).
    assert "slurm_partition" not in args.default_resources and "cpus_per_task" not in args.default_resources


def test_site_profile_combines_with_kmap(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site_home(home)
    # Run from elsewhere (-s): no ./slurm there, so `slurm` is the site's; the workflow profile beside the
    # Snakefile still applies and wins per key (rerun-triggers), while the site's default-resources pass through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = _parse(["--profile", "slurm", "-s", str(REPO / "Snakefile"), "-n"])
    assert args.jobs == 7
    _kmap_settings_hold(args)
    assert {"slurm_account", "slurm_partition"} <= set(args.default_resources)
    # From the root, ./slurm (kmap's) is found first; the site profile is reached by its path.
    monkeypatch.chdir(REPO)
    assert _parse(["--profile", "slurm", "-n"]).jobs == 100
    args = _parse(["--profile", str(site), "-n"])
    assert args.jobs == 7 and "slurm_account" in args.default_resources
    _kmap_settings_hold(args)


def test_dry_run_as_typed_warns_about_a_hidden_site_profile(home: Path, tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "wf")
    assert os.readlink(work / "slurm") == "profiles/slurm"
    env = local_env(HOME=str(home))
    quiet = snakemake(work, "--profile", "slurm", "-n", env=env)
    assert "Using profiles slurm and workflow specific profile profiles/default" in quiet.stdout + quiet.stderr
    assert "kmap warning" not in quiet.stderr
    site = _site_home(home)
    warned = snakemake(work, "--profile", "slurm", "-n", env=env)
    assert f"your site profile {site} is not used" in warned.stderr
    assert f"snakemake --profile {site}" in warned.stderr
