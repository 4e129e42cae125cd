"""`lmforge serve` under load a client controls: many prompts in one request, huge prompts, random paths,
and clients that hang up. None of them may stall other clients or keep the engine busy for nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import statistics
import string
import time

import httpx
import pytest
from serve_fixtures import AUTH, MODEL, serve_model_dir, served  # noqa: F401

logger = logging.getLogger(__name__)


def test_a_request_with_20000_prompts_is_refused_at_once(served):  # noqa: F811
    t0 = time.monotonic()
    r = httpx.post(f"{served.base}/v1/completions", headers=AUTH, timeout=30,
                   json={"model": MODEL, "prompt": ["a"] * 20000, "max_tokens": 1})
    seconds = time.monotonic() - t0
    logger.warning("20000 prompts: %d in %.2f s", r.status_code, seconds)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "64" in r.json()["error"]["message"]
    assert seconds < 5


def test_prompts_times_n_is_capped_as_n_alone_is(served):  # noqa: F811
    over = httpx.post(f"{served.base}/v1/completions", headers=AUTH, timeout=30,
                      json={"model": MODEL, "prompt": ["a"] * 33, "n": 2, "max_tokens": 1})
    assert over.status_code == 400 and "64" in over.json()["error"]["message"]
    at_cap = httpx.post(f"{served.base}/v1/completions", headers=AUTH, timeout=30,
                        json={"model": MODEL, "prompt": ["a"] * 8, "n": 8, "max_tokens": 1})
    assert at_cap.status_code == 200 and len(at_cap.json()["choices"]) == 64


def _series(base: str) -> set[str]:
    text = httpx.get(f"{base}/metrics").text
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("lmforge_requests_total{")}


def test_unknown_paths_share_one_metrics_series(served):  # noqa: F811
    before = _series(served.base)
    rng = random.Random(0)
    with httpx.Client(base_url=served.base) as client:
        for _ in range(200):
            path = "/" + "".join(rng.choices(string.ascii_lowercase, k=12))
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert client.post(f"/v1/models/x{path}", headers=AUTH).status_code == 405  # a route, any id
    new = _series(served.base) - before
    logger.warning("200 random paths: %d new series: %s", len(new), sorted(new))
    assert len(new) <= 3, sorted(new)
    assert 'lmforge_requests_total{endpoint="other",status="404"}' in new


def _random_text(n: int, seed: int) -> str:
    """Text the tokenizer has no cached words for, so each prompt costs its full encoding time."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + "  ", k=n))


def test_health_answers_fast_while_six_1mb_prompts_are_tokenized(served):  # noqa: F811
    prompts = [_random_text(1_000_000, seed) for seed in range(6)]

    async def main() -> tuple[list[float], list[int]]:
        async with httpx.AsyncClient(base_url=served.base, timeout=120) as client:
            async def attack(prompt: str) -> int:
                r = await client.post("/v1/completions", headers=AUTH,
                                      json={"model": MODEL, "prompt": prompt, "max_tokens": 1})
                return r.status_code

            tasks = [asyncio.create_task(attack(p)) for p in prompts]
            await asyncio.sleep(0.3)  # the bodies are in; tokenizing has begun
            probes = []
            while not all(t.done() for t in tasks) and len(probes) < 40:
                t0 = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                probes.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)
            return probes, await asyncio.gather(*tasks)

    probes, statuses = asyncio.run(main())
    logger.warning("/health under six 1 MB prompts: %d probes, median %.3f s, max %.3f s", len(probes),
                   statistics.median(probes) if probes else -1, max(probes, default=-1))
    assert statuses == [400] * 6  # far over the context, found once tokenized
    assert len(probes) >= 3, "the prompts were tokenized before /health could be probed"
    assert statistics.median(probes) < 0.1


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_idle(base: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        health = httpx.get(f"{base}/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"engine still busy after {timeout} s")


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_a_client_that_hangs_up_stops_its_generation(served, endpoint):  # noqa: F811
    max_tokens = 4000
    body = {"model": MODEL, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    body |= {"prompt": "The "} if endpoint == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    _wait_idle(served.base)
    before = _metric(served.base, "lmforge_completion_tokens_total")
    raw = json.dumps(body).encode()
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:  # a client that can hang up at a chosen moment
        sock.sendall(f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        deadline = time.monotonic() + 30
        while httpx.get(f"{served.base}/health").json()["running"] == 0:  # generating now: hang up
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    idle_after = _wait_idle(served.base)
    produced = _metric(served.base, "lmforge_completion_tokens_total") - before
    logger.warning("%s: client gone; engine idle %.2f s later, %d of %d tokens generated",
                   endpoint, idle_after, produced, max_tokens)
    assert produced < max_tokens / 2
    assert idle_after < 2
