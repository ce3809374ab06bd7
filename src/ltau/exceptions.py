"""Exceptions raised by ltau. All derive from ``ValueError`` so generic handlers still work."""


class LTAUInputError(ValueError):
    """An argument or array given to ltau is invalid (NaN, wrong shape, empty, out of range...)."""


class LTAUFileError(ValueError):
    """A file is missing, truncated, corrupted, of another format, or of an unsupported version."""


class NotFittedError(LTAUInputError, AttributeError):
    """An estimator or calibrator was used before ``fit`` (or ``load`` / ``from_dict``).

    Also an ``AttributeError``, as scikit-learn's ``NotFittedError`` is, so ``hasattr`` on a
    fitted-only property of an unfitted object is False.
    """


class LTAUClippingWarning(UserWarning):
    """Recorded errors lay outside the bins and were counted in the end bins.

    ``clipping`` holds the :class:`ltau.distributions.ClippingSummary` (counts and effect).
    Turn it into an error with ``warnings.simplefilter("error", LTAUClippingWarning)``.
    """

    def __init__(self, message: str, clipping: object = None) -> None:
        super().__init__(message)
        self.clipping = clipping
