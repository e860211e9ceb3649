"""Load generators: wrk when installed (C, cheap on the CPU it shares with the server), else
a keep-alive asyncio client in Python so the benchmark still runs on a bare machine."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import have_wrk

WRK_SCRIPT = """
local tokens = {}
for line in io.lines(os.getenv("NETRING_BENCH_TOKENS")) do tokens[#tokens + 1] = line end
local path = os.getenv("NETRING_BENCH_PATH")
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("id", threads) end
init = function(args) math.randomseed(os.time() * 1000 + (id or 0)) end
request = function()
  local t = tokens[math.random(#tokens)]
  return wrk.format("POST", path, {["Authorization"] = "Token " .. t, ["Content-Length"] = "0"})
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, '
    .. '"p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    failed: int
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def post_tokens(base: str, path: str, tokens: list[str], seconds: float, connections: int = 32) -> LoadResult:
    if have_wrk():
        return _wrk(base, path, tokens, seconds, connections)
    return asyncio.run(_python(base, path, tokens, seconds, connections))


def _wrk(base: str, path: str, tokens: list[str], seconds: float, connections: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "tokens"
        token_file.write_text("\n".join(tokens) + "\n")
        script = Path(tmp) / "beat.lua"
        script.write_text(WRK_SCRIPT)
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script), base],
            capture_output=True,
            text=True,
            check=True,
            env={"NETRING_BENCH_TOKENS": str(token_file), "NETRING_BENCH_PATH": path, "PATH": "/usr/bin:/bin"},
        ).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    return LoadResult(
        stats["requests"],
        stats["duration_us"] / 1e6,
        stats["non2xx"] + stats["errors"],
        stats["p50_ms"],
        stats["p99_ms"],
        "wrk",
    )


async def _python(base: str, path: str, tokens: list[str], seconds: float, connections: int) -> LoadResult:
    parts = urlsplit(base)
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while time.monotonic() < deadline:
            token = random.choice(tokens)
            start = time.perf_counter()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Token {token}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            status_line = await reader.readline()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - start) * 1000)
            if not status_line.startswith(b"HTTP/1.1 2"):
                failed += 1
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.monotonic() - began
    latencies.sort()
    return LoadResult(
        len(latencies),
        elapsed,
        failed,
        latencies[len(latencies) // 2],
        latencies[int(len(latencies) * 0.99)],
        "python asyncio",
    )
