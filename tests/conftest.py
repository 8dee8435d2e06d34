"""Brokers for the tests: private RabbitMQ and Mosquitto processes on free 127.0.0.1 ports.

- `rabbitmq`, `mosquitto` (session): one broker shared by every test, for speed. Tests isolate
  themselves with unique exchange, queue, topic and client-id names, and must not break it
  (no alarms, no stops): use the private fixtures for that.
- `rabbitmq_node`, `mosquitto_broker` (function): a broker of the test's own, which it may stop,
  kill, restart or put under an alarm (`rabbitmq_node.ctl("set_vm_memory_high_watermark", "0")`).

Brokers are started on first use only, so unit tests never pay for them, and are stopped at the
end of their scope whether the tests pass, fail or are interrupted. Their start/stop methods
block: from async tests call them with `await asyncio.to_thread(node.restart)`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    with RabbitMQNode(tmp_path_factory.mktemp("rabbitmq-shared"), "shared") as node:
        yield node


@pytest.fixture
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    with RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), "private") as node:
        yield node


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto-shared")) as broker:
        yield broker


@pytest.fixture
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker
