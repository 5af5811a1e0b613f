"""Retained topics where only the newest payload counts: a board's update state and its fleet membership.

paho resends what was unacknowledged at a disconnect once the broker answers the reconnect, and a
message published meanwhile (between the new CONNECT and its CONNACK, or from a connect callback)
goes out before that resend. An older update state resent after the newest one would then be what
the broker keeps, and a board that went live would read ``verifying`` until its next change.

The broker acknowledges a connection's messages in the order it applied them, so an older copy
acknowledged after the newest means it overwrote it: :class:`Latest` then publishes the newest again.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

MAX_TRACKED = 1024  # messages in flight per board (a few topics, each a handful of states)


class Latest:
    """Publishes retained QoS 1 messages so that the broker ends up holding each topic's newest payload.

    ``publish`` from any thread; ``acked`` from paho's network thread (it only records the mid);
    ``settle`` from a thread that may publish (the publisher's sender), which republishes where needed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, tuple[int, bytes]] = {}  # topic -> (mid of its newest payload, the payload)
        self._topic_of: dict[int, str] = {}  # mid in flight -> its topic
        self._landed: set[str] = set()  # topics whose newest payload the broker acknowledged
        self._acks: deque[int] = deque()  # appends are atomic: paho's thread never takes a lock of ours
        self.republished = 0

    def publish(self, client: Any, topic: str, payload: bytes) -> None:
        with self._lock:  # registered before an acknowledgement of it can be settled
            self._publish(client, topic, payload)

    def acked(self, mid: int) -> None:
        self._acks.append(mid)

    def settle(self, client: Any) -> int:
        """Handle the acknowledgements received so far; returns how many topics were published again."""
        again = 0
        with self._lock:
            while self._acks:
                mid = self._acks.popleft()
                topic = self._topic_of.pop(mid, None)
                if topic is None or topic not in self._newest:
                    continue  # another part of the board's messages
                newest_mid, payload = self._newest[topic]
                if mid == newest_mid:
                    self._landed.add(topic)
                elif topic in self._landed:  # an older payload applied after the newest: put the newest back
                    self._publish(client, topic, payload)
                    again += 1
        self.republished += again
        return again

    def _publish(self, client: Any, topic: str, payload: bytes) -> None:
        info = client.publish(topic, payload, qos=1, retain=True)
        self._newest[topic] = (info.mid, payload)
        self._topic_of[info.mid] = topic
        self._landed.discard(topic)
        while len(self._topic_of) > MAX_TRACKED:  # messages paho gave up on are never acknowledged
            del self._topic_of[next(iter(self._topic_of))]
