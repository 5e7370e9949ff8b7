"""The only package that talks to hivemind's DHT / P2P transport (never imports torch).

identity: persistent libp2p RSA key file, PeerID, sign / verify_signature.   signed: signed msgpack envelopes.
node: start_dht / run_bootstrap / stop_dht with one-line errors, visible_maddrs.   aio: the background loop.
records: signed expiring DHT records (peer records, digests).   refresher: RecordRefresher republishes ours.
blobs: BlobServer / fetch_blob, sha256-verified chunked transfers over P2P streams.
"""
