"""The supported public names; changing this list is an API change (see CHANGELOG.md)."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.resources import files

import infrafabric

EXPECTED = {
    "SIGNING_PREFIX", "CallerError", "CanonicalizationError", "Client", "Fabric", "FabricError", "RemoteError", "Hazard", "IFMessage",
    "IdentityError", "IdentityExists", "IdentityNotFound", "KdfCost", "KeyRecord", "KeyRole",
    "KeyState", "Keyring", "KeyringError", "Keystore", "KeystoreCorrupt", "MessageError", "Mode",
    "Outbox", "PeerError", "Provenance", "Reason", "RotationError", "RotationKind", "Route", "Rule",
    "RuleAuthorizer", "Scope", "Signature", "SigningIdentity", "StoreError", "StoreUnavailable", "Verdict", "Verifier",
    "WrongPassphrase", "__version__", "agent_id", "announce_rotation", "apply_rotation",
    "build_message", "canonical_json", "decode_json", "decode_msgpack", "encode_json",
    "encode_msgpack", "key_id", "new_key_record", "route", "route_message", "signing_input",
}  # fmt: skip


def test_exports_are_pinned() -> None:
    assert set(infrafabric.__all__) == EXPECTED
    for name in infrafabric.__all__:
        assert hasattr(infrafabric, name), name


def test_every_error_derives_from_fabric_error() -> None:
    errors = [getattr(infrafabric, name) for name in infrafabric.__all__ if name.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, infrafabric.FabricError)
    assert issubclass(infrafabric.CallerError, ValueError)


def test_the_package_is_typed_and_quiet() -> None:
    assert files("infrafabric").joinpath("py.typed").is_file()
    handlers = logging.getLogger("infrafabric").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_the_interpreter_exits_cleanly_after_decoding() -> None:
    # msgspec 0.19-0.22 double-freed at exit with a pattern-constrained str in a union
    # (see IFMessage.receiver); the crash only shows when the process ends.
    script = (
        "import infrafabric, msgspec;"
        "from infrafabric.protocol.message import IFMessage;"
        "msgspec.json.Decoder(IFMessage); msgspec.msgpack.Decoder(IFMessage)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
