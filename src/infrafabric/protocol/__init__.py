"""The fabric's protocol core: pure code, no I/O, time passed in.

Envelope (:mod:`.message`), canonical bytes (:mod:`.canonical`), identities and
signatures (:mod:`.identity`), keyring and rotation (:mod:`.keyring`, :mod:`.rotation`),
the verification pipeline (:mod:`.verify`, :mod:`.replay`) and hazard-first routing
(:mod:`.routing`).
"""
