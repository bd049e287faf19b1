"""SSL4EO-S12 v1.1 for Hugging Face ``datasets``: load, stream and publish the original Zarr zips.

``import ssl4eos12`` registers the builder, so ``load_dataset("ssl4eos12", CONFIG, ...)`` works.
"""

from .builder import SSL4EOS12, SSL4EOS12Config
from .constants import BANDS, MEAN, MODALITIES, STD, WEBDATASET_MODALITIES, standardization
from .errors import SSL4EOS12BadFileWarning, SSL4EOS12DataError, SSL4EOS12EmptySelectionWarning, SSL4EOS12FileError
from .loader import Loader
from .locations import Locations
from .plot import plot  # the function; matplotlib is imported on first call
from .registration import register
from .torch import arrow_to_numpy, collate, install_formats

__version__ = "0.1.0"

register()
install_formats()

__all__ = [
    "BANDS",
    "MEAN",
    "MODALITIES",
    "SSL4EOS12",
    "STD",
    "WEBDATASET_MODALITIES",
    "Loader",
    "Locations",
    "SSL4EOS12BadFileWarning",
    "SSL4EOS12Config",
    "SSL4EOS12DataError",
    "SSL4EOS12EmptySelectionWarning",
    "SSL4EOS12FileError",
    "arrow_to_numpy",
    "collate",
    "plot",
    "register",
    "standardization",
]
