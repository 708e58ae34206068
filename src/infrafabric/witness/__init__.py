"""The witness: a tamper-evident Merkle log (RFC 9162) of what the fabric decides.

``merkle`` is pure (hashing and proofs); ``log`` keeps the tree in a store; ``checkpoint``
signs and parses checkpoints in the C2SP signed-note format.
"""
