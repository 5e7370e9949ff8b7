"""The typer CLI, one module per command group, thin over the packages. app.py: the root app and main()
(error → exit code mapping); peer.py: ``peer run``; config_cmd.py: ``config show|validate``;
output.py: JSON / table printing helpers."""
