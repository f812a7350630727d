"""Runs a module as if TensorFlow were not installed: `python tests/without_tensorflow.py
jvision.main ARGS...`. Every import finder is wrapped to find no `tensorflow` (so both `import
tensorflow` and `importlib.util.find_spec("tensorflow")` see it missing, as on a GPU image)."""

import runpy
import sys


class _Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
