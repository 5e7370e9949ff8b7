"""Logging to stderr as text or JSON lines; hivemind's own chatter is kept at WARNING unless debugging."""

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "t": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        return json.dumps(out, default=str)


class ExpectedEvents(logging.Filter):
    """Turns hivemind's records of normal swarm events into one calm INFO line without a traceback.

    A peer that joins (or finds nobody) while the others average has no group that round: hivemind logs it as
    an ERROR with a traceback ("Averaging step failed: could not find a group") although the round simply
    continues alone. Installed on the handler, so it also sees the records of hivemind's child processes
    (forked after setup_logging) that propagate to it."""

    CALM = {
        ("hivemind.averaging.averager", "could not find a group"): (
            "no averaging group this round (peers joining, leaving or busy): continuing alone"
        ),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.name.startswith("hivemind."):
            text = str(record.msg)
            for (logger, needle), calm in self.CALM.items():
                if record.name == logger and needle in text:
                    record.msg, record.args = calm, ()
                    record.levelno, record.levelname = logging.INFO, "INFO"
                    record.exc_info = record.exc_text = record.stack_info = None
                    return logging.getLogger().isEnabledFor(logging.INFO)  # --log-level warning hides it
        return True


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ExpectedEvents())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("hivemind", "asyncio"):
        lg = logging.getLogger(name)
        lg.setLevel(quiet)
        lg.handlers[:] = []
        lg.propagate = True
