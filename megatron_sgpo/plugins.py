"""Plug-ins by name or by dotted path: rollout engines, tasks and verifiers from outside the package.

A config names a built-in (``verifier: math``) or an object in the user's own module
(``verifier: my_rewards:score``, i.e. ``package.module:attribute``). Built-ins are also stored as
dotted paths, so nothing is imported until a run asks for it. User modules are imported from
``sys.path`` plus the current directory (as ``python -m`` would). Each registry states its contract;
:mod:`megatron_sgpo.rollout.engine`, :mod:`megatron_sgpo.tasks.registry` and
:mod:`megatron_sgpo.tasks.verifiers` hold the three registries.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping


class PluginError(ValueError):
    """A plug-in name that does not resolve, or an object that does not meet its registry's contract."""


def load_object(target: str, kind: str):
    """The object ``package.module:attr.sub`` names; errors say which part failed and why."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{kind} {target!r} is not of the form 'package.module:Name'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{kind} {target!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = getattr(obj, "__name__", type(obj).__name__)
            raise PluginError(f"{kind} {target!r}: {owner} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Registry:
    """Built-in names (each a dotted path, imported on use), names that exist but cannot run yet, and the contract."""

    kind: str
    contract: str
    builtin: Mapping[str, str]
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.builtin)

    def target(self, name: str) -> str:
        """The dotted path ``name`` stands for; raises PluginError for unknown or unavailable names."""
        if name in self.unavailable:
            raise PluginError(f"{self.kind} {name!r} cannot be used yet: {self.unavailable[name]}")
        if name in self.builtin:
            return self.builtin[name]
        if ":" in name:
            return name
        raise PluginError(f"unknown {self.kind} {name!r}: built-in ones are {self.names()}, or name your own as "
                          f"'package.module:Name' ({self.contract})")

    def resolve(self, name: str):
        return load_object(self.target(name), self.kind)
