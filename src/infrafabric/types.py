"""Named type aliases shared across InfraFabric, in one place.

They are plain aliases of ``str``/``float`` so values cross process and language
boundaries unchanged; the names say what a value means.
"""

from __future__ import annotations

from typing import TypeAlias

#: ``if://agent/<name>``: an agent's address, also the ``sender`` of its messages.
AgentId: TypeAlias = str
#: Any address a message can go to: an agent, ``if://topic/...`` or ``if://service/...``.
Address: TypeAlias = str
#: A key id: the first 16 base64url characters of SHA-256 of the raw Ed25519 public key.
KeyId: TypeAlias = str
#: Seconds since the Unix epoch, UTC. Every pure component takes time as this argument.
Timestamp: TypeAlias = float
