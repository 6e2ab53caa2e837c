"""`speechssl probe superb`: the SUPERB task set for one upstream, task after task.

``OUT/`` holds::

    superb.json          the upstream, the task roots, the speechssl-probe overrides, and
                         each task's state (finished ones with their dev/test metric)
    <task>/              that task's speechssl-probe experiment dir (trainer.exp_dir)
    cache/<key>/         layer caches, one per task root: tasks run on the same root (e.g.
                         PR and ASR on one LibriSpeech root with both label files) share one
    report/              probe.json, probe.md, probe_layers.png over the finished tasks

A finished task (its ``results.json`` written for this upstream) is skipped on a rerun; an
interrupted one resumes through speechssl-probe's own resume (finished lr runs are kept,
an unfinished one continues from its newest checkpoint). A rerun with another upstream or
other overrides into the same ``OUT`` is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from speechssl.errors import ConfigError, SpeechSSLError
from speechssl.utils.atomic import atomic_write_json

log = logging.getLogger("speechssl.probe")

STATE = "superb.json"
#: tasks with a stand-in in the bundled synthetic corpus (``speechssl probe prepare-synth``),
#: SUPERB's order except SD (the slowest) last
BUNDLED_TASKS = ("pr", "ks", "qbe", "sid", "ic", "sd")
#: the SUPERB task set (``er`` and ``sf`` come from their own module when installed)
SUPERB_TASKS = ("pr", "asr", "ks", "qbe", "sid", "asv", "sd", "ic", "er", "sf")
NO_TRAINING = ("qbe",)  # DTW over each layer; nothing is trained


def known_tasks() -> list[str]:
    """Every task ``speechssl-probe`` can run (the registered ones and ``qbe``)."""
    import speechssl.downstream.run  # noqa: F401  (registers every task module)
    from speechssl.downstream.tasks import TASKS

    return sorted({*TASKS.names(), *NO_TRAINING})


def parse_tasks(text: str) -> list[str]:
    """``pr,ks,...`` (or ``bundled``, ``superb``) -> task names, order kept; an unknown or
    repeated name is an error."""
    names: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        expand = {"bundled": BUNDLED_TASKS, "superb": SUPERB_TASKS}.get(item, (item,))
        names.extend(expand)
    if not names:
        raise ConfigError("--tasks: no task given")
    known = known_tasks()
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ConfigError(
            f"--tasks: no such probing task {', '.join(unknown)}; tasks: {', '.join(known)} "
            f"(bundled = {','.join(BUNDLED_TASKS)})"
        )
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise ConfigError(f"--tasks: repeated task(s) {', '.join(repeated)}")
    return names


def data_key(root: Path) -> str:
    """Digest of a task root (its resolved path and every ``wav.scp`` and ``segments`` under
    it): tasks run on the same root share its layer caches (a cache records the data dir it
    was made from, so roots elsewhere get their own)."""
    root = root.resolve()
    h = hashlib.sha256(str(root).encode() + b"\0")
    files = sorted(p for p in root.rglob("*") if p.name in ("wav.scp", "segments") and p.is_file())
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def split_overrides(overrides: Sequence[str], tasks: Sequence[str]) -> dict[str, list[str]]:
    """Each task's overrides: the plain ``KEY=VALUE`` ones for every task, ``TASK:KEY=VALUE``
    ones for that task only (after the plain ones)."""
    common: list[str] = []
    own: dict[str, list[str]] = {t: [] for t in tasks}
    for item in overrides:
        head, sep, _ = item.partition("=")
        task, colon, key = head.partition(":")
        if not sep:
            raise ConfigError(f"override {item}: expected KEY=VALUE or TASK:KEY=VALUE")
        name = key if colon else head
        if name.lstrip("+~") in _SET_BY_SUPERB:
            raise ConfigError(
                f"override {item}: superb sets {name} for every task (use --tasks, --upstream, "
                "--data/--task-data, --out)"
            )
        if not colon:
            common.append(item)
        elif task not in own:
            raise ConfigError(f"override {item}: task {task} is not in --tasks")
        else:
            own[task].append(item[len(task) + 1 :])
    return {t: [*common, *own[t]] for t in tasks}


_SET_BY_SUPERB = ("task", "upstream", "data.dir", "trainer.exp_dir", "data.cache_dir")


def task_overrides(
    task: str, upstream: str, root: Path, out: Path, overrides: Sequence[str]
) -> list[str]:
    """The speechssl-probe command line of one task of the run (``overrides``: the task's)."""
    kind = "qbe" if task in NO_TRAINING else "trained"
    cache = out / "cache" / f"{kind}-{data_key(root)}"
    return [
        f"task={task}", f"upstream={upstream}", f"data.dir={root}",
        f"trainer.exp_dir={out / task}", f"data.cache_dir={cache}", *overrides,
    ]  # fmt: skip


def _check_roots(tasks: Sequence[str], roots: dict[str, Path]) -> None:
    for task in tasks:
        root = roots[task]
        if not root.is_dir():
            raise ConfigError(
                f"task {task}: no task root {root} (prepare it, give --task-data "
                f"{task}=DIR, or leave {task} out of --tasks)"
            )


def _load_state(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / STATE
    if not path.is_file():
        return {"upstream_identity": identity, "tasks": {}, "order": []}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if state.get("upstream_identity") != identity:
        raise ConfigError(
            f"{out}: a superb run of another upstream ({state.get('upstream')}); use a new --out"
        )
    state.setdefault("tasks", {})
    state.setdefault("order", [])
    return state


def run_superb(
    upstream: str,
    data: str,
    out: str,
    tasks: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    task_data: dict[str, str] | None = None,
    label: str = "",
    note: str = "",
    config_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``tasks`` in order for one upstream (see the module doc); returns the state."""
    from speechssl.distributed import init_distributed, shutdown_distributed
    from speechssl.downstream.cli import compose, to_probe_config
    from speechssl.downstream.report import write_report
    from speechssl.downstream.run import RESULTS, run_probe
    from speechssl.downstream.upstreams import load_upstream

    per_task = split_overrides(overrides, tasks)
    extra = dict(task_data or {})
    bad = sorted(set(extra) - set(tasks))
    if bad:
        raise ConfigError(f"--task-data {bad[0]}=...: {bad[0]} is not in --tasks")
    roots = {t: Path(extra[t]) if t in extra else Path(data) / t for t in tasks}
    _check_roots(tasks, roots)
    out_dir = Path(out)
    # every task's config is composed (and checked) before the first one runs
    configs = {}
    commands = {t: task_overrides(t, upstream, roots[t], out_dir, per_task[t]) for t in tasks}
    for task in tasks:
        try:
            configs[task] = to_probe_config(compose(commands[task], config_dir))
        except ConfigError as exc:
            raise ConfigError(f"task {task}: {exc}") from None
    device = next(iter(configs.values())).trainer.device
    identity = load_upstream(upstream, "cpu").identity()
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(out_dir, identity)
    state["upstream"] = upstream
    state["order"] = list(dict.fromkeys([*state.get("order", []), *tasks]))
    for task in tasks:  # refused before anything runs
        record = state["tasks"].get(task, {})
        if record and record.get("overrides") != per_task[task]:
            raise ConfigError(
                f"{out_dir / task}: task {task} was run with other overrides "
                f"({' '.join(record.get('overrides', [])) or 'none'}); use a new --out"
            )
    if label:
        state["label"] = label
    for task in tasks:
        results_path = out_dir / task / RESULTS
        record = state["tasks"].get(task, {})
        if record.get("state") == "done" and results_path.is_file():
            results = json.loads(results_path.read_text())
            echo(f"superb: {task}: finished, skipped ({results['metric']} {results['test']:.4f})")
            continue
        echo(f"superb: {task}: running speechssl-probe {' '.join(commands[task])}")
        state["tasks"][task] = {
            "state": "running", "data": str(roots[task]), "overrides": per_task[task],
        }  # fmt: skip
        atomic_write_json(out_dir / STATE, state)
        env = init_distributed(device)
        try:
            results = run_probe(configs[task], env)
        except SpeechSSLError as exc:
            raise ConfigError(f"task {task}: {exc}") from None
        finally:
            shutdown_distributed(env)
        state["tasks"][task] = {
            "state": "done", "data": str(roots[task]), "overrides": per_task[task],
            "metric": results["metric"],
            "mode": results["mode"], "dev": results["dev"], "test": results["test"],
        }  # fmt: skip
        atomic_write_json(out_dir / STATE, state)
    _, table = write_report(expand_run_dirs([(None, str(out_dir))]), out_dir / "report", note=note)
    echo(table.rstrip("\n"))
    return state


def expand_run_dirs(runs: Sequence[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """``probe report`` arguments: a superb output dir stands for its finished tasks'
    experiment dirs (in the run's task order; labelled with the run's ``--label`` unless
    given one); other dirs are kept."""
    expanded: list[tuple[str | None, str]] = []
    for label, path in runs:
        state_path = Path(path) / STATE
        if not state_path.is_file():
            expanded.append((label, path))
            continue
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{state_path}: not valid JSON ({exc})") from None
        tasks = state.get("tasks", {})
        order = [t for t in state.get("order", list(tasks)) if t in tasks]
        done = [t for t in order if tasks[t].get("state") == "done"]
        if not done:
            raise ConfigError(f"{path}: a superb run with no finished task yet")
        name = label or state.get("label") or None
        expanded.extend((name, str(Path(path) / t)) for t in done)
    return expanded
