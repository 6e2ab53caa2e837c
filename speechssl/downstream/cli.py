"""`speechssl-probe`: compose the probe's Hydra config and run a probing experiment.

Same conventions as ``speechssl-train`` (:mod:`speechssl.train.cli`): config groups (here
``task``, ``preset``, and the trainer's ``optim`` and ``trainer``), ``KEY=VALUE`` overrides
checked against the schema (:class:`speechssl.downstream.config.ProbeConfig`), Hydra's own
settings refused, ``--config-dir``, ``--cfg job``; the runs write ``log.jsonl``,
TensorBoard and checkpoints through :class:`~speechssl.train.trainer.TrainLoop` and resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from speechssl.errors import SpeechSSLError
from speechssl.train.cli import CONFIG_DIR, LOG_FORMAT, App

log = logging.getLogger("speechssl.probe")

PROBE_CONFIG_DIR = CONFIG_DIR / "probe"


def probe_app() -> App:
    from speechssl.downstream.config import ProbeConfig, register_probe_configs

    return App(
        primary="probe",
        schema=ProbeConfig,
        register=register_probe_configs,
        roots=(PROBE_CONFIG_DIR, CONFIG_DIR),
        groups=("task", "preset", "optim", "trainer"),
    )


def compose(overrides: Sequence[str], config_dir: str | None = None) -> Any:
    from speechssl.train.cli import compose as compose_app

    return compose_app(overrides, config_dir, probe_app())


def to_probe_config(cfg: Any) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, ValidationError

    from speechssl.downstream.config import ProbeConfig
    from speechssl.errors import ConfigError

    try:
        merged = OmegaConf.merge(OmegaConf.structured(ProbeConfig), cfg)
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as exc:
        raise ConfigError(
            f"missing mandatory value {exc.full_key} (set it on the command line)"
        ) from None
    except ValidationError as exc:
        raise ConfigError(f"{exc.full_key}: {exc.msg}") from None
    assert isinstance(obj, ProbeConfig)
    return obj


def run(cfg: Any) -> int:
    from speechssl.distributed import init_distributed, shutdown_distributed
    from speechssl.downstream.run import run_probe

    rank = int(os.environ.get("RANK", "0"))
    try:
        probe_cfg = to_probe_config(cfg)
        env = init_distributed(probe_cfg.trainer.device)
        try:
            results = run_probe(probe_cfg, env)
        finally:
            shutdown_distributed(env)
    except SpeechSSLError as exc:
        print(f"speechssl-probe: error: {exc}", file=sys.stderr)
        return 1
    if rank == 0:
        keep = ("task", "upstream", "metric", "lr", "dev", "test")
        print(json.dumps({k: results[k] for k in keep}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from speechssl.train.cli import _HelpAction

    class HelpAction(_HelpAction):
        def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
            from speechssl.train.cli import group_options

            parser.print_help()
            try:
                options = group_options(getattr(namespace, "config_dir", None), probe_app())
            except SpeechSSLError as exc:
                parser.exit(1, f"speechssl-probe: error: {exc}\n")
            print("\nconfig groups (GROUP=OPTION):")
            for group, names in options.items():
                print(f"  {group}: {' '.join(names)}")
            parser.exit(0)

    parser = argparse.ArgumentParser(
        prog="speechssl-probe",
        add_help=False,
        description="Probe a frozen upstream on a SUPERB-like task: cache its layers, train "
        "a weighted layer sum + task head for each lr of the sweep, pick the best on dev and "
        "score test (results.json in trainer.exp_dir). Upstreams: fbank, mfcc, a speechssl "
        "model dir / training exp dir, a local transformers model dir. Guide: docs/probing.md.",
        epilog="example: speechssl-probe task=pr preset=synth upstream=exp/hubert/iter2/train "
        "data.dir=data/probe/pr trainer.exp_dir=exp/probe/pr_iter2 'lr=[1e-2,1e-3]'",
    )
    parser.add_argument("--config-dir", metavar="DIR", help="user config dir (same group layout)")
    parser.add_argument("--cfg", choices=["job"], help="print the composed config and run nothing")
    parser.add_argument("-h", "--help", action=HelpAction, help="this help and the group options")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``speechssl-probe``)."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides, args.config_dir)
    except SpeechSSLError as exc:
        print(f"speechssl-probe: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.cfg == "job":
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        sys.exit(0)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
