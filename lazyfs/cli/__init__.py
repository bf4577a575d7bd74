"""The ``lazyfs`` command line (``main``)."""


def main(argv: list[str] | None = None) -> int:
    """The entry point. A command handles its own Ctrl-C; this catches one
    that comes before the command runs (while its modules are imported or
    its parser built), so that too ends with one line, not a traceback."""
    try:
        from .main import main as run
        return run(argv)
    except KeyboardInterrupt:
        import sys
        sys.stderr.write("lazyfs: interrupted\n")
        return 130
