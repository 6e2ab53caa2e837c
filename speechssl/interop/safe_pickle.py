"""Read foreign (fairseq / fairseq2) checkpoints without running their code.

fairseq checkpoints are ``torch.save`` pickles that name fairseq and omegaconf classes
(``fairseq.data.dictionary.Dictionary`` in ``task_state``, ``argparse.Namespace`` in
``args``, omegaconf ``DictConfig`` in ``cfg``), so ``weights_only=True`` alone refuses them and
a plain ``pickle.load`` would import fairseq and call whatever the pickle names. Here the
pickle goes through ``torch.load(weights_only=True)`` (torch's restricted unpickler) with an
explicit allow-list of extra globals: harmless builtins and containers, ``argparse.Namespace``,
numpy scalar/array rebuilders, and, for every fairseq/omegaconf class we expect, an *inert
stand-in* (:class:`ForeignObject`) that only stores the state the pickle hands it. Anything
else is refused before unpickling starts, with a :class:`~speechssl.errors.CheckpointError`
naming the global; nothing from the checkpoint is imported or executed.

:func:`to_plain` turns the loaded stand-ins into plain Python data (a ``DictConfig`` becomes a
``dict``, a ``Dictionary`` keeps its ``symbols``), which is all the importers read.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from speechssl.errors import CheckpointError


class ForeignObject:
    """Inert stand-in for a class a foreign checkpoint's pickle names.

    It has no behaviour: construction keeps the positional arguments (``args``), and the
    pickle's state (a dict) becomes its attributes. ``foreign_name`` is the dotted name of
    the class it stands for.
    """

    foreign_name: ClassVar[str] = ""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            # (dict state, slot state) as pickle writes for classes with __slots__
            self.__dict__.update(state[0] or {})
            self.__dict__.update(state[1])
        else:
            self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.foreign_name}>"


def _stand_in(dotted: str) -> type[ForeignObject]:
    cls_name = dotted.rsplit(".", 1)[-1]
    return type(cls_name, (ForeignObject,), {"foreign_name": dotted, "__module__": __name__})


#: classes from fairseq / omegaconf that are replaced by inert stand-ins
STAND_IN_NAMES: tuple[str, ...] = (
    "fairseq.data.dictionary.Dictionary",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.EnumNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
)
#: fairseq config dataclasses and enums (``object_type`` of a DictConfig, enum values) are
#: stood in for as well; the pattern matches only names under ``fairseq.``
STAND_IN_PATTERN = re.compile(r"fairseq(\.[A-Za-z_]\w*)+\.(\w*(Config|Enum|Type)|Choices)")

_STAND_INS: dict[str, type[ForeignObject]] = {n: _stand_in(n) for n in STAND_IN_NAMES}


class _TypingAny:
    """Stand-in for ``typing.Any`` as omegaconf metadata references it."""


def _plain_globals() -> list[tuple[Callable[..., Any], str]]:
    """Real (harmless) objects allowed under their own names."""
    out: list[tuple[Callable[..., Any], str]] = [
        (argparse.Namespace, "argparse.Namespace"),
        (collections.OrderedDict, "collections.OrderedDict"),
        (collections.defaultdict, "collections.defaultdict"),
        (_TypingAny, "typing.Any"),
        (builtins.dict, "builtins.dict"),
        (builtins.list, "builtins.list"),
        (builtins.tuple, "builtins.tuple"),
        (builtins.set, "builtins.set"),
        (builtins.int, "builtins.int"),
        (builtins.float, "builtins.float"),
        (builtins.bool, "builtins.bool"),
        (builtins.str, "builtins.str"),
        (builtins.bytes, "builtins.bytes"),
        (builtins.slice, "builtins.slice"),
        (builtins.object, "builtins.object"),
        (type(None), "builtins.NoneType"),
    ]
    try:
        import numpy as np

        scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
        reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out.append((scalar, f"{mod}.scalar"))
            out.append((reconstruct, f"{mod}._reconstruct"))
        out.append((np.dtype, "numpy.dtype"))
        out.append((np.ndarray, "numpy.ndarray"))
        for dt in (np.float64, np.float32, np.int64, np.int32, np.bool_, np.float16):
            dtype_cls = type(np.dtype(dt))
            out.append((dtype_cls, f"numpy.dtypes.{dtype_cls.__name__}"))
    except (ImportError, AttributeError):  # pragma: no cover - numpy is a torch dependency
        pass
    return out


def allowed_names() -> set[str]:
    """Every global name a foreign checkpoint may reference (beyond torch's own)."""
    return {name for _, name in _plain_globals()} | set(_STAND_INS)


def _allowed_for(names: list[str]) -> list[tuple[Callable[..., Any], str]]:
    out = list(_plain_globals())
    known = {name for _, name in out}
    for name in names:
        if name in known:
            continue
        if name in _STAND_INS:
            out.append((_STAND_INS[name], name))
        elif STAND_IN_PATTERN.fullmatch(name):
            cls = _STAND_INS.setdefault(name, _stand_in(name))
            out.append((cls, name))
    return out


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|global ['\"]?([\w.]+)")


def _refused(path: Path, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refuses to unpickle the global {name!r}: not on the allow-list for foreign "
        "checkpoints (only tensors, containers, argparse/omegaconf/fairseq config and "
        "dictionary data are read; nothing from a checkpoint is executed)"
    )


@contextmanager
def _safe(names: list[str]) -> Iterator[None]:
    with torch.serialization.safe_globals(_allowed_for(names)):  # type: ignore[arg-type]
        yield


def load_foreign_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Unpickle the ``torch.save`` file ``path`` (zip or legacy format) with the restricted
    loader; returns its object with fairseq/omegaconf classes as :class:`ForeignObject`
    stand-ins (pass it through :func:`to_plain` for plain data)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    names: list[str] = []
    zipped = _is_zip(p)
    if zipped:
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
        except (
            RuntimeError,
            ValueError,
            KeyError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ) as exc:
            raise CheckpointError(f"{p}: not a readable torch checkpoint ({exc})") from None
        allowed = {name for _, name in _allowed_for(names)}
        bad = [n for n in names if n not in allowed]
        if bad:
            raise _refused(p, bad[0])
    else:
        # legacy (pre-zip) files are scanned by torch's restricted unpickler itself: an
        # unknown fairseq class gets its stand-in only when listed in STAND_IN_NAMES
        names = list(_STAND_INS)
    try:
        with _safe(names):
            # zip files are memory-mapped: a large checkpoint is not read into RAM twice
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        match = _GLOBAL_IN_MESSAGE.search(str(exc))
        if match:
            raise _refused(p, match.group(1) or match.group(2)) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: refused by the restricted unpickler ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({first})") from None


def _node_value(node: ForeignObject) -> Any:
    return to_plain(node.__dict__.get("_val"))


def to_plain(obj: Any) -> Any:
    """Stand-ins -> plain data: omegaconf containers -> dict/list, omegaconf nodes -> their
    values, ``Namespace`` -> dict, other stand-ins -> a dict of their attributes plus
    ``__class__`` (the dotted name); tensors are returned as they are."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, ForeignObject):
        name = obj.foreign_name
        if name == "omegaconf.dictconfig.DictConfig":
            content = obj.__dict__.get("_content")
            if not isinstance(content, dict):
                return to_plain(content)
            return {str(k): to_plain(v) for k, v in content.items()}
        if name == "omegaconf.listconfig.ListConfig":
            content = obj.__dict__.get("_content")
            return [to_plain(v) for v in content] if isinstance(content, list) else content
        if name.startswith("omegaconf.nodes."):
            return _node_value(obj)
        out = {k: to_plain(v) for k, v in obj.__dict__.items()}
        out["__class__"] = name
        return out
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if type(obj).__module__ == "numpy":
        try:
            return obj.item()
        except (AttributeError, ValueError):
            return obj
    return obj


__all__ = [
    "STAND_IN_NAMES",
    "ForeignObject",
    "allowed_names",
    "load_foreign_checkpoint",
    "to_plain",
]
