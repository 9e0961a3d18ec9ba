"""``sgpo`` command line: train, profile, serve, plan, export.

``sgpo train --config FILE key.sub=value ...`` runs the RL loop (under torchrun for several ranks,
or as one process). ``sgpo quickstart`` is ``sgpo train`` with the settings of
``megatron_sgpo/assets/quickstart.yaml``, for a first run on a CPU machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

QUICKSTART = os.path.join(os.path.dirname(__file__), "assets", "quickstart.yaml")


def _train(args) -> int:
    from megatron_sgpo.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.command == "profile":
        overrides += ["train.steps=0", "data.eval_size=0"]
    cfg = load_config(args.config, overrides)  # validated before any process group or model exists
    if args.command == "profile" and cfg.run.mode != "sgpo":
        raise ConfigError(f"config key run.mode: sgpo profile needs run.mode=sgpo, got {cfg.run.mode}")
    from megatron_sgpo.loop.trainer import Trainer
    from megatron_sgpo.platform.dist import destroy_parallel

    Trainer(cfg).run()
    # Gloo's threads left to interpreter shutdown can abort the process ("terminate called without an active
    # exception"). Only after success: after a failure, other ranks may still be inside a collective.
    destroy_parallel()
    return 0


def _quiet_known_warnings() -> None:
    """megatron warns at import that TE/apex are absent: expected on CPU, noise for a newcomer."""
    for message in (r".*Apex is not installed.*", r".*Transformer Engine and Apex are not installed.*",
                    r".*full scope is deprecated.*"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_known_warnings()
    if argv and argv[0] == "serve":
        from megatron_sgpo.rollout.server import serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "export":
        from megatron_sgpo.loop.export import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "plan":
        from megatron_sgpo.cluster.cli import plan_main

        return plan_main(argv[1:])
    parser = argparse.ArgumentParser(prog="sgpo", description="sGPO / GRPO RL post-training on megatron-core")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("train", "run the RL loop"), ("profile", "run only the sGPO profiling pass"),
                            ("quickstart", "profile + sGPO training of the bundled policy on CPU")]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=QUICKSTART if name == "quickstart" else None, help="YAML run config")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10 run.mode=grpo")
    sub.add_parser("serve", help="serve an HF checkpoint with SGLang's HTTP protocol (sgpo serve --help)")
    sub.add_parser("plan", help="rank cluster layouts for a model (sgpo plan --help)")
    sub.add_parser("export", help="write a run's trained policy as an HF folder (sgpo export --help)")
    args = parser.parse_args(argv)
    from megatron_sgpo.config import ConfigError
    from megatron_sgpo.loop.build import InputError
    from megatron_sgpo.loop.checkpoint import CheckpointError
    from megatron_sgpo.platform.dist import RankZeroError

    try:
        return _train(args)
    except ConfigError as exc:  # one clear line naming the key; nothing has run
        print(f"sgpo {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except (InputError, CheckpointError) as exc:  # a dataset or checkpoint that cannot be used; nothing has run
        print(f"sgpo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RankZeroError as exc:  # a rollout, profiling or evaluation failure, seen by every rank
        print(f"sgpo {args.command}: error: {exc} (checkpoints and profile in the output folder are intact)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
