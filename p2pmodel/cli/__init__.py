"""The typer CLI, one module per command group, thin over the packages.

app.py        root app and main(): errors → exit codes (2 usage/config, 1 runtime), one line, --debug for more
peer.py       peer run / peer status            swarm_cmd.py  bootstrap / swarm peers
versions.py   versions list|show|pull|diff|plot|propose      demo.py  a local swarm with a live table
config_cmd.py config show|validate              output.py     JSON lines and tables
"""
