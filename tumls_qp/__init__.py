"""tumls-qp: unsupervised multi-level segmentation of H&E whole slide images (TUMLS) for QuPath.

``import tumls_qp`` is light: torch, reportlab, fastapi and paquo load only in the
modules that need them, so ``tumls-qp --help`` starts at once.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tumls-qp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
