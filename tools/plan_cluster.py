#!/usr/bin/env python
"""Rank training/engine layouts for an sGPO step on a cluster; same as ``sgpo plan`` (docs/planner.md)."""
import sys

from megatron_sgpo.cluster.cli import plan_main

if __name__ == "__main__":
    sys.exit(plan_main())
