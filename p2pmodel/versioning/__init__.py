"""Versions of the model (DESIGN.md section 3, "Versions"). No network, no hivemind; torch only in store.py.

store.py: content-addressed checkpoints (safetensors, atomic, digest-verified) and the crash-safe pointer to
the last committed round.   atomic.py: temp file + fsync + rename.
semver.py: ``Version`` (vMAJOR.MINOR.PATCH), ``GENESIS`` = v0.1.0, ``next_version(parent, bump)``.
votes.py: signed vote bodies (``make_vote``, ``check_vote_body``), ``candidate_id``, ``electorate_hash``.
quorum.py: ``quorum_size``, ``required_votes`` (2/3 of the round's electorate) and ``continuity_votes`` (more
than half of the parent's: only one side of a split swarm can tag), ``VoteBox`` (the only door through which
a vote counts; one vote per voter per version slot).
tag.py: self-verifying certificates: ``build_tag``, ``verify_tag``, ``tag_id``, ``encode_tag``/``decode_tag``.
ledger.py: ``Ledger``, the append-only, fsynced, checksummed file of verified tags; one certificate per version.
"""
