"""A light client for the CLI: joins the DHT in client mode (no training, no GPU), with an ephemeral identity."""

from contextlib import contextmanager

from p2pmodel.config import load_config


@contextmanager
def light_client(initial_peers: list[str], timeout_s: float = 15.0):
    from p2pmodel.swarm.node import start_dht, stop_dht

    dht = start_dht(
        None,
        initial_peers,
        ["/ip4/127.0.0.1/tcp/0"],
        None,
        client_mode=True,
        wait_timeout_s=min(timeout_s, 10.0),
        startup_timeout_s=timeout_s,
    )
    try:
        yield dht
    finally:
        stop_dht(dht)


def resolve_run_id(config_path) -> str:
    """The run id a peer with this config would have (needs the validation data to fingerprint it)."""
    from p2pmodel.data import load_corpus
    from p2pmodel.node.peer import compute_run_id

    cfg = load_config(config_path)
    d = cfg.data
    corpus = load_corpus(d.source, d.paths, d.max_corpus_bytes, d.val_fraction, cfg.model.seq_len + 2)
    return compute_run_id(cfg, corpus.fingerprint)
