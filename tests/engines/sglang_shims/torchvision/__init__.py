"""An import-only stand-in for torchvision in the SGLang server process (tests/engines/sglang_shims).

SGLang 0.5.23 imports torchvision at module level in its multimodal processors, which the text-only server
loads on start; PyPI's torchvision builds do not match the CPU torch 2.13 ("operator torchvision::nms does
not exist") and pulling it in replaces torch with a CUDA build. Every `torchvision.*` module imports, and
every name in it is a placeholder that raises when used, so only an image model would notice. No
distribution metadata is installed, so transformers still reports torchvision as absent.
"""
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{self._name}: torchvision is a stand-in in this SGLang server (text models only)")

    def __mro_entries__(self, bases):  # `class X(torchvision.Something)` at import time
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self.__name__}.{attr}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


__version__ = "0.0.0+sgpo-stand-in"
__path__ = []  # a package: submodules come from the finder below
sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _StubModule
