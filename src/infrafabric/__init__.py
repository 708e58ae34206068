"""InfraFabric: a coordination fabric for swarms of AI agents.

The names below are the supported public API (pinned by ``tests/test_public_api.py``);
everything else may change between minor versions.
"""

from __future__ import annotations

import logging

from infrafabric._version import __version__
from infrafabric.client import Client, RemoteError
from infrafabric.errors import (
    CallerError,
    CanonicalizationError,
    FabricError,
    IdentityError,
    IdentityExists,
    IdentityNotFound,
    KeyringError,
    KeystoreCorrupt,
    MessageError,
    PeerError,
    RotationError,
    StoreError,
    StoreUnavailable,
    WrongPassphrase,
)
from infrafabric.fabric import Fabric
from infrafabric.keystore import KdfCost, Keystore
from infrafabric.protocol.canonical import canonical_json
from infrafabric.protocol.identity import Outbox, SigningIdentity, key_id
from infrafabric.protocol.keyring import KeyRecord, Keyring, KeyRole, KeyState, new_key_record
from infrafabric.protocol.message import (
    SIGNING_PREFIX,
    Hazard,
    IFMessage,
    Provenance,
    Scope,
    Signature,
    agent_id,
    build_message,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    signing_input,
)
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.rotation import RotationKind, announce_rotation, apply_rotation
from infrafabric.protocol.routing import Route, route, route_message
from infrafabric.protocol.verify import Mode, Rule, RuleAuthorizer, Verdict, Verifier

__all__ = [
    "SIGNING_PREFIX",
    "CallerError",
    "CanonicalizationError",
    "Client",
    "Fabric",
    "FabricError",
    "Hazard",
    "IFMessage",
    "IdentityError",
    "IdentityExists",
    "IdentityNotFound",
    "KdfCost",
    "KeyRecord",
    "KeyRole",
    "KeyState",
    "Keyring",
    "KeyringError",
    "Keystore",
    "KeystoreCorrupt",
    "MessageError",
    "Mode",
    "Outbox",
    "PeerError",
    "Provenance",
    "Reason",
    "RemoteError",
    "RotationError",
    "RotationKind",
    "Route",
    "Rule",
    "RuleAuthorizer",
    "Scope",
    "Signature",
    "SigningIdentity",
    "StoreError",
    "StoreUnavailable",
    "Verdict",
    "Verifier",
    "WrongPassphrase",
    "__version__",
    "agent_id",
    "announce_rotation",
    "apply_rotation",
    "build_message",
    "canonical_json",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "key_id",
    "new_key_record",
    "route",
    "route_message",
    "signing_input",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
