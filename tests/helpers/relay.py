"""A TCP relay on loopback between a client and a real server, for network faults no broker makes on demand.

It forwards both ways, and can ``mute`` the server's answers (they are read and dropped, as on a
link that lost them), ``hold`` them on the next connections until ``release``, and ``cut`` every
connection (both sockets closed, as when a link drops).
"""

from __future__ import annotations

import select
import socket
import threading

from helpers.broker import free_port


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.accepted = 0
        self._muted = self._holding = False
        self._held: list[tuple[socket.socket, bytes]] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def mute(self, on: bool = True) -> None:
        self._muted = on

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
        for client, data in held:
            try:
                client.sendall(data)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)

    def close(self) -> None:
        self._stopping = True
        self.cut()
        _close(self._server)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        server.sendall(data)
                        continue
                    with self._lock:
                        if self._holding:
                            self._held.append((client, data))
                            continue
                    if not self._muted:
                        client.sendall(data)
        except (OSError, ValueError):  # cut: the sockets were closed under it
            return
        finally:
            _close(client)
            _close(server)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
