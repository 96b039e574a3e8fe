"""M4: a signal to the service's main process stops every process of it. SIGTERM (systemd, ``docker stop``,
Kubernetes) used to end the main process only: the inference worker and the uvicorn process went on
answering on the port as orphans. Each case starts the service on 127.0.0.1, signals the PID it started
(never the group), and waits, bounded, for no process of its group and no listener on its port."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import Service, group_pids, listening, request, tiny_run


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_a_signal_to_the_main_process_stops_every_process(tmp_path_factory, sig):
    run = tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")
    svc = Service(
        [f"ckpt={run['a']}", "thresholds=raw", "stop_timeout=5"], tmp_path_factory.mktemp("life") / "s.log"
    )
    try:
        svc.wait_healthy()
        assert len(group_pids(svc.proc.pid)) >= 3  # main, API process, inference worker (+ queue manager)
        svc.proc.send_signal(sig)
        code = svc.proc.wait(40)
        deadline = time.monotonic() + 15
        while (group_pids(svc.proc.pid) or listening(svc.port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_pids(svc.proc.pid)
        assert not left, f"left after {sig.name}: {left}\n{svc.log.read_text()[-2000:]}"
        assert not listening(svc.port)
        if sig != signal.SIGKILL:  # a graceful stop: exit status 0, and the log says so
            assert code == 0 and "stopped" in svc.log.read_text(), svc.log.read_text()[-2000:]
        with pytest.raises(OSError):
            request(svc.port, "GET", "/health")
    finally:
        svc.stop()
