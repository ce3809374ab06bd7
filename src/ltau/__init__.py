"""ltau: Loss Trajectory Analysis for Uncertainty.

Record every training sample's error at every epoch, turn each trajectory into a distribution,
and predict a query's error distribution from its nearest training samples in the model's latent
space. See ``ErrorRecorder``, ``ErrorDistributions`` and ``LTAUEstimator``.
"""

from ltau._version import __version__
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator, LTAUPrediction
from ltau.exceptions import LTAUClippingWarning, LTAUFileError, LTAUInputError, NotFittedError
from ltau.histogram import Bins
from ltau.recording import ErrorLog, ErrorRecorder

__all__ = [
    "Bins",
    "ErrorDistributions",
    "ErrorLog",
    "ErrorRecorder",
    "LTAUClippingWarning",
    "LTAUEstimator",
    "LTAUFileError",
    "LTAUInputError",
    "LTAUPrediction",
    "NotFittedError",
    "__version__",
]
