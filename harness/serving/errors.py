"""The one error the serving stage raises."""


class ServeError(RuntimeError):
    """A server could not be started or died; the message quotes the tail of its log."""
