"""Exceptions raised by ltau. Both derive from ``ValueError`` so generic handlers still work."""


class LTAUInputError(ValueError):
    """An argument or array given to ltau is invalid (NaN, wrong shape, empty, out of range...)."""


class LTAUFileError(ValueError):
    """A file is missing, truncated, corrupted, of another format, or of an unsupported version."""
