"""The board's agent on MQTT: telemetry and commands (:mod:`.telemetry`) through a spooled publisher
(:mod:`.publisher`, :mod:`.spool`), Home Assistant discovery, and fleet updates (:mod:`.updates`:
signed control messages, chunked delivery, admission checks)."""
