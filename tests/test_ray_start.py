"""A local Ray whose node misses Ray's fixed 30 s start window (a busy host) is stopped and started again."""

from __future__ import annotations

import subprocess
import sys

import pytest
import ray

from pipelines.synthesis import service


def test_a_start_that_times_out_is_cleaned_up_and_tried_again(monkeypatch, capsys) -> None:
    half_started: list[subprocess.Popen] = []
    calls: list[dict] = []

    def init(**kwargs) -> None:  # the first start leaves a process behind and times out, as Ray's node does
        calls.append(kwargs)
        if len(calls) == 1:
            half_started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    service.start_local_ray(2)
    assert len(calls) == 2 and calls[1]["num_cpus"] == 2
    assert half_started[0].poll() is not None, "the half-started node's process was left running"
    assert "starting it again (2/3)" in capsys.readouterr().err


def test_other_start_errors_and_the_last_timeout_are_raised(monkeypatch) -> None:
    def refuse(**kwargs) -> None:
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ValueError, match="num_cpus"):
        service.start_local_ray(2)

    def time_out(**kwargs) -> None:
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", time_out)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(Exception, match="timed out during startup"):
        service.start_local_ray(2, attempts=2)
