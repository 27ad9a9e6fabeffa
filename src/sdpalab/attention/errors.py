"""The one exception that means "this combination cannot run here" (status ``unsupported``)."""


class Unsupported(Exception):
    """The variant cannot run on this machine or with these inputs; the message says why."""
