"""The MQTT version setting and the broker reasons the agent logs, without a broker."""

from __future__ import annotations

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import config
from edge_agent.twins.mqtt_service import MQTT_VERSIONS, describe_mqtt_error


def reason(packet: int, code: int) -> ReasonCode:
    return ReasonCode(packet, identifier=code)


def test_a_v3_brokers_refusal_is_named_and_says_what_to_set() -> None:
    # paho reads a 3.1.1 CONNACK return code 1 to an MQTT 5 CONNECT as this reason
    refused = MqttConnectError(
        ReasonCode(PacketTypes.CONNACK, aName="Unsupported protocol version")
    )
    assert describe_mqtt_error(refused) == (
        "the broker refused the connection: Unsupported protocol version (reason code 132): "
        'the broker does not speak MQTT 5: set [twins] mqtt_version = "auto" or "3.1.1"'
    )


def test_a_311_return_code_is_named_too() -> None:
    assert describe_mqtt_error(MqttConnectError(5)) == (
        "the broker refused the connection: Connection refused: Not authorised (reason code 5)"
    )


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0x8E, "Session taken over (reason code 142): another connection took over"),
        (0x98, "Administrative action (reason code 152): an operator acted on the broker"),
        (0x8B, "Server shutting down (reason code 139): the broker is shutting down"),
    ],
)
def test_a_brokers_disconnect_reason_is_named(code: int, words: str) -> None:
    error = aiomqtt.MqttCodeError(reason(PacketTypes.DISCONNECT, code), "Unexpected disconnection")
    assert (
        describe_mqtt_error(error)
        == f"the broker ended the session: {words}"
        + (describe_mqtt_error(error).partition(words)[2])
    )
    assert describe_mqtt_error(error).startswith(f"the broker ended the session: {words}")


def test_other_errors_are_given_as_they_are() -> None:
    assert describe_mqtt_error(aiomqtt.MqttError("[Errno 111] Connection refused")) == (
        "[Errno 111] Connection refused"
    )


def test_the_config_checks_the_version() -> None:
    assert config.MQTT_VERSIONS == MQTT_VERSIONS
    config._check_mqtt_version({"mqtt_version": "3.1.1"}, "[twins]")
    config._check_mqtt_version({}, "[twins]")
    with pytest.raises(config.ConfigError, match=r'mqtt_version: "auto" .* got \'4\''):
        config._check_mqtt_version({"mqtt_version": "4"}, "[twins]")
