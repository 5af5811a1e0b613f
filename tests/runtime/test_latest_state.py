"""A board's retained update state ends as its newest, even when paho resends an older one after it.

The fault is real and was seen at scale (2,000 simulated boards; 21 kept ``verifying`` after they went
live): a state acknowledged by nobody before the link dropped is resent once the broker answers the
reconnect, while a newer state published between CONNECT and CONNACK is already through.
A relay on loopback makes that order happen on demand against a real mosquitto.
"""

from __future__ import annotations

import json

from helpers.broker import Mosquitto
from helpers.mqtt import Subscriber, config
from helpers.relay import Relay

from edgec.runtime.agent.publisher import Publisher

TOPIC = "edgec/test/pi-1/update/digits"


def _retained(port: int) -> dict:
    """What a host that starts now reads: the broker's retained message on the topic."""
    reader = Subscriber(port, "host-now", persistent=False)
    try:
        assert Subscriber.wait(lambda: reader.on("/update/digits"), 10)
        return reader.on("/update/digits")[-1]
    finally:
        reader.close()


def test_an_older_state_resent_after_the_newest_is_overwritten_again(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    relay = Relay(broker.port)
    pub = Publisher(config(tmp_path, relay.port)).start()
    watch = Subscriber(broker.port, "watch", persistent=False)
    try:
        assert Subscriber.wait(lambda: pub.connected, 10)
        seen = lambda state: any(m["state"] == state for m in watch.on("/update/digits"))  # noqa: E731

        relay.mute()  # the broker applies "verifying"; its PUBACK never reaches the board
        pub.publish_latest(TOPIC, json.dumps({"state": "verifying"}).encode())
        assert Subscriber.wait(lambda: seen("verifying"), 10)

        relay.hold()  # the next connection's CONNACK waits
        relay.cut()
        assert Subscriber.wait(lambda: relay.accepted == 2, 15), "the board did not reconnect"
        pub.publish_latest(TOPIC, json.dumps({"state": "live"}).encode())  # goes out before the CONNACK
        assert Subscriber.wait(lambda: seen("live"), 10)

        relay.mute(False)
        relay.release()  # CONNACK: paho resends "verifying", which lands after "live"
        assert Subscriber.wait(lambda: [m["state"] for m in watch.on("/update/digits")][-1:] == ["live"]
                               and pub.latest.republished, 15)
        states = [m["state"] for m in watch.on("/update/digits")]
        assert states.count("verifying") == 2, states  # the resend really happened after "live"
        assert states.index("live") < len(states) - 2
        assert _retained(broker.port)["state"] == "live"
    finally:
        watch.close()
        pub.stop(flush_s=1)
        relay.close()
        broker.stop()
