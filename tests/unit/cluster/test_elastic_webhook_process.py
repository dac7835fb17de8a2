"""The webhook's listener process alone: a real child, its pipe driven by the test.

``_ListenerProcess`` starts ``python -m edge_agent.cluster.elastic.webhook_process`` as the
agent does; the test sends the certificate and policies and posts reviews over real HTTPS.
The whole agent (registration, restarts) is in tests/integration/elastic/test_webhook.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from edge_agent.cluster.elastic import webhook as webhook_module
from edge_agent.cluster.elastic import webhook_tls
from fleet_model.elastic.units import WAITING_GATE
from tests.unit.cluster.test_elastic_webhook import patched, pod, policy, review

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tls(tmp_path: Path) -> webhook_tls.WebhookTls:
    made, _ = webhook_tls.ensure_certificates(
        tmp_path / "tls",
        names=["127.0.0.1"],
        lifetime=timedelta(days=2),
        renew_before=timedelta(days=1),
        now=datetime.now(UTC),
    )
    return made


@pytest_asyncio.fixture
async def child() -> AsyncIterator[webhook_module._ListenerProcess]:
    started = await webhook_module._ListenerProcess.start("127.0.0.1", 0)
    try:
        yield started
    finally:
        await started.stop()


def post_blocking(port: int, tls: webhook_tls.WebhookTls, body: object) -> dict[str, Any]:
    context = ssl.create_default_context(cadata=tls.ca_bundle.decode())
    context.check_hostname = False  # the certificate names the service; the CA is what counts
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(
            "POST", "/mutate-pods", json.dumps(body), {"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        assert answer.status == 200
        response: dict[str, Any] = json.loads(answer.read())["response"]
    finally:
        connection.close()
    return response


async def test_the_child_answers_from_the_policies_it_was_sent(
    child: webhook_module._ListenerProcess, tls: webhook_tls.WebhookTls
) -> None:
    await child.send(webhook_module._tls_message(tls))
    port = await child.listening()
    # No policies yet: admitted unchanged (fail open).
    first = await asyncio.to_thread(post_blocking, port, tls, review(pod(), uid="1"))
    assert first == {"uid": "1", "allowed": True}
    message = {"policies": {"revision": 1, "synced": True, "items": [policy("web")]}}
    await child.send(message)
    second: dict[str, Any] = {}
    for _ in range(200):  # the pipe and the HTTPS request race: ask until it has the policies
        second = await asyncio.to_thread(post_blocking, port, tls, review(pod(), uid="2"))
        if "patch" in second:
            break
    assert second["uid"] == "2"
    assert patched(pod(), second)["spec"]["schedulingGates"] == [{"name": WAITING_GATE}]
    # Its counts come back over the pipe (every REPORT_INTERVAL seconds).
    reports: list[Mapping[str, Any]] = []
    assert child._process.stdin is not None
    child._process.stdin.close()  # EOF: it reports what it has and ends
    await child.reports(reports.append)
    assert sum(r["admissions"].get("held", 0) for r in reports) >= 1
    assert sum(r["admissions"].get("not_synced", 0) for r in reports) == 1
    assert await child.stop() == 0


async def test_a_child_that_cannot_listen_says_why(
    child: webhook_module._ListenerProcess, tls: webhook_tls.WebhookTls
) -> None:
    await child.send(webhook_module._tls_message(tls))
    port = await child.listening()
    taken = await webhook_module._ListenerProcess.start("127.0.0.1", port)
    await taken.send(webhook_module._tls_message(tls))
    with pytest.raises(RuntimeError, match="address already in use"):
        await taken.listening()
    assert taken.returncode == 2


async def test_a_bad_message_ends_the_child(child: webhook_module._ListenerProcess) -> None:
    await child.send({"surprise": 1})
    with pytest.raises(RuntimeError, match="ended before listening"):
        await child.listening()
    assert child.returncode == 3
