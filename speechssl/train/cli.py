"""`speechssl-train`: compose the Hydra config groups and run :class:`~speechssl.train.trainer.Trainer`.

Config search path, highest priority first:

1. ``--config-dir DIR``: a user config dir with the same group layout (``model/``, ``data/``,
   ``optim/``, ``trainer/``, optionally its own ``train.yaml``). A file here wins over the
   packaged file of the same name (a user's ``model/hubert_tiny.yaml`` replaces ours).
2. ``speechssl/configs/``: the packaged groups (shipped in the wheel, so a plain
   ``pip install`` has every preset).
3. The structured schemas in Hydra's ConfigStore (``speechssl.train.config``).

Hydra composes the config (groups, overrides, ``+``/``~``/``++``); speechssl runs the job
itself. So no Hydra run dir is written, and Hydra's own ``hydra.*`` settings (callbacks,
``job_logging``/``hydra_logging`` factories, search path) are refused from the command line
and from config files: they are how a config could run code before the task starts.
Keys the schema does not have (``+trainer.max_step=1``) are refused with the closest valid
key; only ``model.overrides`` is free-form (the model's own config, checked by the model).

Multi-process: ``torchrun --nproc-per-node N -m speechssl.train model=... data.dir=...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechssl.errors import ConfigError, SpeechSSLError

log = logging.getLogger("speechssl.train")

PRIMARY_CONFIG = "train"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The packaged config groups (``speechssl/configs/``)."""
GROUPS = ("model", "data", "optim", "trainer")
FREE_FORM = ("model.overrides",)
"""Config paths whose keys the schema does not list (checked by their consumer)."""
# Hydra's stock logging configs name only `logging.*` handler classes
LOGGING_CLASS_PREFIX = "logging."
# same format as Hydra's default job logging, on stdout
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def find_config_dir() -> Path:
    """The packaged config dir (``speechssl/configs/``, inside the installed package)."""
    return CONFIG_DIR


# ----------------------------------------------------------------------------- refusals


def _is_hydra_key(key: str | None) -> bool:
    if not key:
        return False
    head = key.lstrip("+~").split("@", 1)[0]
    return head == "hydra" or head.startswith(("hydra.", "hydra/"))


def refuse_hydra_overrides(overrides: Sequence[str]) -> None:
    """Refuse command-line overrides of Hydra's own node (``hydra.*``, ``hydra/...``,
    ``GROUP@hydra...``): callbacks and logging factories there would run code."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(_one_line(str(exc))) from None
    for override in parsed:
        if _is_hydra_key(override.key_or_group) or _is_hydra_key(override.package):
            raise ConfigError(
                f"{override.input_line}: speechssl-train does not take Hydra's own settings "
                "(hydra.*: callbacks, logging, run dirs); it runs the job itself"
            )


def refuse_hydra_node(hydra_node: Mapping[Any, Any]) -> None:
    """Refuse a composed ``hydra`` node that a config file turned into running code: the parts
    Hydra's app would run before the task (callbacks; ``job_logging``/``hydra_logging``
    ``()``/``_target_`` factories and non-``logging.`` classes) and extra search paths.
    speechssl-train runs none of them; the refusal says so instead of ignoring the file."""
    for key in ("callbacks", "searchpath"):
        if hydra_node.get(key):
            raise ConfigError(
                f"hydra.{key}: speechssl-train runs no Hydra callbacks and takes extra configs "
                "only from --config-dir; remove it from the config file"
            )
    for key in ("job_logging", "hydra_logging"):
        _refuse_factories(hydra_node.get(key), f"hydra.{key}")


def _refuse_factories(node: Any, path: str) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in ("_target_", "()"):
                raise ConfigError(f"{where}: configs may not instantiate classes or factories")
            if key == "class" and not str(value).startswith(LOGGING_CLASS_PREFIX):
                raise ConfigError(f"{where}: {value!r} is not a logging class")
            _refuse_factories(value, where)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _refuse_factories(value, f"{path}[{i}]")


#: an ``${oc.env:NAME}`` interpolation (with or without a default) and the variable names
#: that look like credentials
_ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:\s*([A-Za-z_][A-Za-z0-9_]*)")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|CREDENTIAL", re.IGNORECASE)


def refuse_secret_env(node: Any, path: str = "") -> None:
    """Refuse a config value that reads a credential from the environment
    (``${oc.env:HF_TOKEN}``): every config value is written resolved to ``config.yaml`` and
    the TensorBoard hparams, so a secret read this way would be stored in the exp dir."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            refuse_secret_env(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            refuse_secret_env(value, f"{path}[{i}]")
    elif isinstance(node, str):
        for name in _ENV_INTERPOLATION.findall(node):
            if _SECRET_NAME.search(name):
                raise ConfigError(
                    f"{path}: reads ${{oc.env:{name}}}, which looks like a secret; configs are "
                    "saved resolved into the exp dir, so credentials stay in the environment "
                    "(`speechssl export hf --push` reads HF_TOKEN itself)"
                )


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            keys.extend(_dotted_keys(tp, f"{dotted}."))
    return keys


def refuse_unknown_keys(node: Any, schema: type, path: str = "", root: type | None = None) -> None:
    """Raise ConfigError for a key of ``node`` that ``schema`` (a dataclass) does not have,
    naming the closest valid key (``trainer.max_step``: did you mean ``trainer.max_steps``?)."""
    root = root or schema
    if not isinstance(node, Mapping):
        return
    types = _field_types(schema)
    for key, value in node.items():
        dotted = f"{path}{key}"
        if key not in types:
            valid = _dotted_keys(root)
            close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.6)
            hint = (
                _suggest(close[0], valid)
                if close
                else "valid keys here: " + ", ".join(f"{path}{k}" for k in types)
            )
            raise ConfigError(f"{dotted}: no such config key; {hint}")
        tp = types[key]
        if dotted not in FREE_FORM and dataclasses.is_dataclass(tp) and isinstance(tp, type):
            refuse_unknown_keys(value, tp, f"{dotted}.", root)


def _suggest(key: str, valid: Sequence[str]) -> str:
    if any(v.startswith(f"{key}.") for v in valid):  # a group: no value to set
        return f"did you mean {key}?"
    return f"did you mean {key}? (set it with {key}=..., no +)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- composition


def _search_path(config_dir: str | None, roots: Sequence[Path] = (CONFIG_DIR,)) -> Any:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path = ConfigSearchPathImpl()
    # Hydra's own node (its schema and stock options), needed to compose; we never run it
    search_path.append("hydra", "pkg://hydra.conf")
    if config_dir is not None:
        user = Path(config_dir).resolve()
        if not user.is_dir():
            raise ConfigError(f"--config-dir {config_dir}: not a directory")
        if (user / "hydra").exists():
            raise ConfigError(
                f"--config-dir {config_dir}: has a hydra/ group; speechssl-train does not "
                "take Hydra's own settings (callbacks, logging, run dirs)"
            )
        search_path.append("speechssl-user", f"file://{user}")
    for i, root in enumerate(roots):  # packaged groups; the first root wins
        search_path.append("speechssl" if i == 0 else f"speechssl-{i}", f"file://{root}")
    search_path.append("schema", "structured://")
    return search_path


@dataclasses.dataclass(frozen=True)
class App:
    """What a Hydra app of speechssl composes: its primary config, schema (a dataclass),
    ConfigStore registration, packaged config roots and groups (for ``--help``).
    ``speechssl-train`` is :data:`TRAIN_APP`; ``speechssl-probe`` is another."""

    primary: str
    schema: type
    register: typing.Callable[[], None]
    roots: tuple[Path, ...]
    groups: tuple[str, ...]


def _train_app() -> App:
    from speechssl.train.config import TrainConfig, register_configs

    return App(PRIMARY_CONFIG, TrainConfig, register_configs, (CONFIG_DIR,), GROUPS)


def _loader(config_dir: str | None, app: App | None = None) -> Any:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.plugins import Plugins

    app = app or _train_app()
    Plugins.instance()  # registers Hydra's config sources (file://, pkg://, structured://)
    app.register()
    return ConfigLoaderImpl(config_search_path=_search_path(config_dir, app.roots))


def _missing_option_message(exc: Any) -> str:
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    options = list(getattr(exc, "options", None) or [])
    group, _, name = missing.rpartition("/")
    if not group or not options:
        return _one_line(str(exc))
    options = [o for o in options if o != "schema"]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return f"{group}={name}: no such option; {hint}options: {', '.join(options)}"


def compose(overrides: Sequence[str], config_dir: str | None = None, app: App | None = None) -> Any:
    """Compose the task config (a DictConfig without the ``hydra`` node) from the search path
    and ``overrides``; every refusal above is a :class:`ConfigError`."""
    from hydra.core.utils import setup_globals
    from hydra.errors import HydraException, MissingConfigException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from speechssl.train.config import refuse_targets

    app = app or _train_app()
    refuse_hydra_overrides(overrides)
    setup_globals()  # Hydra's resolvers (${now:...}), as an app would have them
    try:
        cfg = _loader(config_dir, app).load_configuration(
            config_name=app.primary,
            overrides=list(overrides),
            run_mode=RunMode.RUN,
            from_shell=True,
        )
    except MissingConfigException as exc:
        raise ConfigError(_missing_option_message(exc)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(str(exc))) from None
    hydra_node = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert isinstance(hydra_node, dict)
    refuse_hydra_node(hydra_node)
    with open_dict(cfg):
        del cfg["hydra"]
    task = OmegaConf.to_container(cfg, resolve=False)
    refuse_targets(task)
    refuse_secret_env(task)
    refuse_unknown_keys(task, app.schema)
    if "model" in cfg and cfg.model.get("init_from") and not _names_a_model(overrides):
        # the architecture comes from model.init_from: the default preset does not apply
        cfg.model.name = ""
    return cfg


def _names_a_model(overrides: Sequence[str]) -> bool:
    """Whether the command line picks a model preset (``model=X``) or ``model.name``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group in ("model", "model.name") and not override.is_delete():
            return True
    return False


def group_options(config_dir: str | None = None, app: App | None = None) -> dict[str, list[str]]:
    """The options of every config group on the search path (for ``--help``)."""
    app = app or _train_app()
    loader = _loader(config_dir, app)
    return {
        group: [o for o in loader.get_group_options(group) if o != "schema"] for group in app.groups
    }


# ----------------------------------------------------------------------------- running


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


class _HelpAction(argparse.Action):
    """``--help``: usage plus the options of each group (honouring an earlier --config-dir)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
        parser.print_help()
        try:
            options = group_options(getattr(namespace, "config_dir", None))
        except SpeechSSLError as exc:
            parser.exit(1, f"speechssl-train: error: {exc}\n")
        print("\nconfig groups (GROUP=OPTION):")
        for group, names in options.items():
            print(f"  {group}: {' '.join(names)}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechssl-train",
        add_help=False,
        description="Pretrain a model: compose the Hydra config groups (model, data, optim, "
        "trainer) with KEY=VALUE overrides and run the trainer. Every field: "
        "speechssl/configs/README.md.",
        epilog="examples: speechssl-train model=hubert_tiny data=synth optim=tiny "
        "trainer=cpu_demo data.dir=data/train data.labels=[exp/labels/train] "
        "trainer.exp_dir=exp/train; +model.overrides.encoder.num_layers=2 changes a model "
        "field; torchrun --nproc-per-node N -m speechssl.train ... runs on N processes",
    )
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="user config dir (same group layout), searched before the packaged configs",
    )
    parser.add_argument(
        "--cfg",
        choices=["job"],
        help="print the composed config (after every check) and run nothing",
    )
    parser.add_argument("-h", "--help", action=_HelpAction, help="this help and the group options")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``speechssl-train``); exits with the run's code."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = compose(args.overrides, args.config_dir)
    except SpeechSSLError as exc:
        print(f"speechssl-train: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.cfg == "job":
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        sys.exit(0)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
