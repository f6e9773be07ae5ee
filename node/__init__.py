"""The validator node, in rooms: chain, net, api, detect, host, and the tools people run."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("vigil")  # the one place: pyproject.toml's [project] version
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0+source"
