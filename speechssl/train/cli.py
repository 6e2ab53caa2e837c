"""`speechssl-train`: the Hydra app over ``configs/`` that runs :class:`~speechssl.train.trainer.Trainer`.

Config search path, highest priority first: ``--config-dir DIR`` (a user config dir with
the same group layout), the repository's ``configs/`` (found next to the package, so an
editable install needs nothing set), and the structured schemas in Hydra's ConfigStore
(enough to run with every default when ``configs/`` is absent).

Multi-process: ``torchrun --nproc-per-node N -m speechssl.train model=... data.dir=...``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from speechssl.errors import SpeechSSLError

log = logging.getLogger("speechssl.train")

PRIMARY_CONFIG = "train"


def find_config_dir() -> Path | None:
    """The repository's ``configs/`` dir (beside the ``speechssl`` package), if present."""
    candidate = Path(__file__).resolve().parents[2] / "configs"
    return candidate if (candidate / f"{PRIMARY_CONFIG}.yaml").is_file() else None


def run(cfg: Any) -> int:
    """Validate ``cfg`` and train; returns the exit code (errors are reported, not raised)."""
    from speechssl.distributed import init_distributed, shutdown_distributed
    from speechssl.train.config import to_train_config
    from speechssl.train.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        train_cfg = to_train_config(cfg)
        env = init_distributed(train_cfg.trainer.device)
        try:
            summary = Trainer(train_cfg, env).fit()
        finally:
            shutdown_distributed(env)
    except SpeechSSLError as exc:
        print(f"speechssl-train: error: {exc}", file=sys.stderr)
        return 1
    if summary.stopped == "signal":
        if rank == 0:
            log.warning(
                "stopped by a signal at step %d; state saved in %s (rerun to resume)",
                summary.step,
                summary.last_checkpoint,
            )
        return 143  # 128 + SIGTERM: a preempted job, not a finished one
    if rank == 0:
        log.info(
            "finished at step %d (epoch %d, %s); last checkpoint %s; best %s=%s; final model %s",
            summary.step,
            summary.epoch,
            summary.stopped,
            summary.last_checkpoint,
            train_cfg.trainer.best_metric,
            summary.best_value,
            summary.final_dir,
        )
    return 0


def main() -> None:
    """Console-script entry point (``speechssl-train``)."""
    import hydra
    from omegaconf import DictConfig

    from speechssl.train.config import register_configs

    register_configs()
    config_dir = find_config_dir()

    def task(cfg: DictConfig) -> None:
        code = run(cfg)
        if code:
            sys.exit(code)

    app = hydra.main(
        version_base="1.3",
        config_path=str(config_dir) if config_dir is not None else None,
        config_name=PRIMARY_CONFIG if config_dir is not None else "train_schema",
    )(task)
    app()


if __name__ == "__main__":
    main()
