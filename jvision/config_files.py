"""Loading a config file: `--config=FILE[:ARG]` is FILE's `get_config(ARG)`."""

import importlib.util
import os

import ml_collections

from jvision.errors import UserError


def load_config_module(path: str):
    """Imports a config file by path, so one config can build on another:
    `base = config_files.load_config_module(os.path.join(os.path.dirname(__file__), "x.py"))`."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"jvision_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of `--config=FILE[:ARG]`: FILE's `get_config(ARG)` (ARG None when absent).
    `UserError` when the file cannot be loaded or refuses ARG."""
    path, arg = spec, None
    head, colon, tail = spec.rpartition(":")
    if colon and "/" not in tail and not os.path.exists(spec):
        path, arg = head, tail
    if not os.path.isfile(path):
        raise UserError(f"cannot load the config file: {path} does not exist")
    try:
        config = load_config_module(path).get_config(arg)
    except Exception as error:  # The file's own code failed: its message, on one line.
        message = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
        raise UserError(f"cannot load the config file {path}: {message}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config
