"""The agent's exception hierarchy: what its modules raise on purpose, as one tree.

Each boundary of the agent (its settings, the outbound port, the MQTT adapter,
the SQLite outbox, every device probe) turns the errors of what it wraps
(pydantic, paho, ``sqlite3``, ``OSError``, a printer's bytes) into one of
these, so a caller catches ``AgentError`` or one branch of it, never a library
error. Every class carries the data a caller needs (attributes named below);
``str()`` is a sentence for a log line. Each class stays defined beside the
code that raises it (and importable from there); this module holds the root and
the branch that has no module of its own::

    AgentError                        (base; this module)
    ├── AgentConfigError              agent.config: agent.toml or KIOSKFLEET_AGENT_* cannot work
    │                                 (also a ValueError); .problems [(field, message)], .source
    ├── OutboundError                 agent.agent: the Outbound port refused a message (the
    │   │                             Agent counts it as dropped); .topic
    │   └── OutboundFullError         the bounded queue of unsent messages is full; .limit
    ├── MqttConnectionError           agent.mqtt_connection: between this terminal and the broker
    │   ├── ConnectionSetupError      the settings cannot work (TLS files), or no will can be built
    │   ├── BrokerUnreachableError    TCP/TLS connect failed; .host, .port, .cause
    │   ├── ConnectRefusedError       CONNACK with a failure reason code; .reason_code, .reason
    │   ├── ConnectTimeoutError       no CONNACK within connect_timeout_s
    │   ├── SubscribeRefusedError     SUBACK refused the cmd subscription; .reason_code, .reason
    │   └── ConnectionLostError       an established session dropped; .reason
    ├── InstallError                  agent.install.errors: an install step failed (the handler
    │   │                             leaves a working slot)
    │   ├── ArchiveRefusedError       the bundle is refused before a byte is written; .reason
    │   │                             (REFUSAL_REASONS), .member, .detail
    │   ├── RestartError              the service restart failed or timed out; .argv, .reason
    │   ├── InstallStateError         install.json or the slot layout is unreadable; .path, .reason
    │   └── AgentSlotsError           agent.self_update: the agent's own slots or trial files are
    │                                 unreadable, or an agent release cannot be staged; .path, .reason
    ├── GateRefusedError              agent.install_gate: the install gate refused a kiosk
    │                                 application's request; .reason (a Refusal)
    ├── InstallNotStartedError        agent.install_gate: end_install() with no install running
    ├── KioskSocketError              agent.kiosk_interface: the local socket cannot be set up;
    │                                 .path, .reason
    ├── UpdateServiceError            agent.update_service: updates cannot be set up (the trusted
    │                                 root is unreadable); .reason
    ├── UpdaterStateError             agent.updater: its state file (last directive seq, highest
    │                                 release counters) is unreadable or of another version; .path
    ├── EnrollmentError               agent.enrollment: EST enrollment or renewal failed, or the
    │                                 key or certificate file is unusable; .status, .reason
    ├── OutboxError                   agent.outbox: the outbox database failed; .operation, .cause
    └── ProbeError                    (this module) a device or the OS could not be read, or
        │                             answered something that cannot be a status
        ├── EscPosStatusError         agent.probes.escpos: not an answer to DLE EOT n (also a
        │                             ValueError); .n, .status
        ├── IppDecodeError            agent.probes.ipp: not a well-formed IPP response (also a
        │                             ValueError); .offset
        ├── PcscError                 agent.probes.pcsc
        │   ├── PcscNotInstalledError pyscard (the ``pcsc`` extra) is not installed
        │   └── PcscServiceError      pcscd unreachable or refused a call; .hresult
        ├── SystemReadError           agent.probes.system: an OS fact (uptime, ...); .path
        └── UsbScanError              agent.probes.usb: sysfs cannot be listed (also an
                                      OSError); .path

Not in the tree: ``protocol.errors.ProtocolError`` (the wire's, shared with the
server), ``protocol.broker_url.BrokerUrlError`` (reaches callers as an
``AgentConfigError``), plain ``ValueError`` for a programming error in
arguments (a bad ``boot_id``, a repeated probe name), and the private
exceptions a module raises and catches itself (``_NoAnswerError``,
``_ResponseTooLargeError``, ``_NotAnOutboxError``): they never leave it.

A probe's error never leaves the Agent either: the core turns it into an
``unknown`` status with the error in ``detail``. This module imports nothing.
"""

from __future__ import annotations

__all__ = ["AgentError", "ProbeError"]


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ProbeError(AgentError):
    """A device or the operating system could not be read, or its answer cannot be a status."""
