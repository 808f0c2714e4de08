"""Preloaded into a Dask worker (``dask worker ADDRESS --preload THIS_FILE``): the worker reports another
tumls-qp version than the one installed, as a worker from another installation would."""

import distributed.versions

# Dask may import a preload file more than once: keep the original function from the first time.
_installed = getattr(distributed.versions, "_tumls_qp_installed", distributed.versions.get_package_info)
distributed.versions._tumls_qp_installed = _installed


def _other_tumls_qp(packages):
    info = _installed(packages)
    if "tumls-qp" in info:
        info["tumls-qp"] = "0.0.1-elsewhere"
    return info


distributed.versions.get_package_info = _other_tumls_qp
