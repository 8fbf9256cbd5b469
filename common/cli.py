"""The one command-line style: ``python -m TOOL key=value ...`` composes ``conf/<name>.yaml`` with Hydra.

Every entry point (experiments.fit/generate/evaluate/train_vae, data.synthetic, data.prepare)
runs its task through :func:`run`. Mistakes on the command line end in one line on stderr,
``error: ...``, and exit status 2 (:class:`UsageError`): an unknown key, an unknown config group
option or an override that does not parse (checked before Hydra starts), and, while the task runs,
a value that the instantiated classes or the task reject (:func:`reported`).
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
T = TypeVar("T")


class UsageError(SystemExit):
    """A one-line error for the command line (exit status 2)."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def run(task: Callable[[DictConfig], Any], conf: str, argv: list[str] | None = None, errors: tuple[type[Exception], ...] = ()) -> Any:
    """Compose ``conf/<conf>.yaml`` with the overrides in ``argv``, call ``task(cfg)`` through Hydra and return its result.

    ``errors``: further exception types the task raises for bad settings, reported in one line.
    """
    overrides = list(sys.argv[1:] if argv is None else argv)
    check_overrides(conf, overrides)
    results = []

    @functools.wraps(task)
    def job(cfg: DictConfig) -> None:
        """The task, its result kept for the caller."""
        results.append(reported(task, errors)(cfg))

    saved_argv = sys.argv
    sys.argv = [sys.argv[0], f"--config-name={conf}", *overrides]  # Lightning's DDP launcher re-runs this argv
    try:
        hydra.main(config_path=str(CONF_DIR), config_name=conf, version_base="1.3")(job)()
    finally:
        sys.argv = saved_argv
    return results[0] if results else None


def compose_config(conf: str, overrides: list[str] = ()) -> DictConfig:
    """``conf/<conf>.yaml`` composed with ``overrides`` outside a Hydra run (no ``hydra`` node)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(conf, overrides=list(overrides))


def check_overrides(conf: str, overrides: list[str]) -> None:
    """Compose once before Hydra runs, so that a bad override ends in one line (Hydra's flags, ``-m`` etc., are left to Hydra)."""
    if any(arg.startswith("-") for arg in overrides):
        return
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose(conf, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as exn:
        raise UsageError(missing_option_message(exn)) from None
    except ConfigCompositionException as exn:
        cause = exn.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.parent_node is not None:
            raise UsageError(unknown_key_message(conf, overrides, cause)) from None
        raise UsageError(_first_lines(exn, cause)) from None
    except OverrideParseException as exn:
        details = [line for line in str(exn).splitlines() if line.strip() and not line.startswith(("See ", "Error parsing override"))]
        raise UsageError(f"{exn.override}: cannot parse it ({'; '.join(details)}); overrides are key=value") from None


def unknown_key_message(conf: str, overrides: list[str], error: ConfigAttributeError | ConfigKeyError) -> str:
    """``foo=1: no key 'foo' in conf/NAME.yaml (did you mean ...? / valid keys: ...); to add a new key use +foo=1``."""
    full_key = error.full_key
    override = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == full_key), full_key)
    parent = full_key.rpartition(".")[0]
    keys = [str(key) for key in error.parent_node.keys() if not str(key).startswith("_") and (parent or key != "hydra")]
    close = difflib.get_close_matches(str(error.key), keys, n=3)
    if close:
        hint = f"did you mean {' or '.join(f'{parent}.{key}' if parent else key for key in close)}?"
    elif keys:
        hint = f"valid keys{' of ' + parent if parent else ''}: {', '.join(keys)}"
    else:
        hint = f"{parent} holds a value, not keys"
    return f"{override}: no key {full_key!r} in conf/{conf}.yaml ({hint}); to add a new key use +{override}"


def missing_option_message(error: MissingConfigException) -> str:
    """``data=nope: no conf/data/nope.yaml; valid: prepared, synthetic``."""
    if error.options is None or "/" not in (error.missing_cfg_file or ""):
        return _first_lines(error)
    group, _, name = error.missing_cfg_file.rpartition("/")
    return f"{group}={name}: no conf/{error.missing_cfg_file}.yaml; valid: {', '.join(error.options)}"


def reported(task: Callable[[DictConfig], Any], errors: tuple[type[Exception], ...] = ()) -> Callable[[DictConfig], Any]:
    """Turn configuration errors, missing files and ``errors`` raised by ``task`` into one-line messages instead of tracebacks."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        """``task(cfg)`` with its configuration errors reported in one line."""
        try:
            return task(cfg)
        except InstantiationException as exn:
            raise UsageError(instantiation_message(exn)) from None
        except MissingMandatoryValue as exn:
            raise UsageError(missing_value_message(exn)) from None
        except (FileNotFoundError, *errors) as exn:
            raise UsageError(_one_line(exn)) from None

    return wrapper


def instantiation_message(error: InstantiationException) -> str:
    """What a class rejected while Hydra built it, naming its config node (``data.batch_size=0: ...``).

    A ValueError is a bad value and shows as its message; other causes keep their type name. A
    message starting ``key=`` gets the node's path in front of the key.
    """
    cause = error.__cause__ or error
    message = _one_line(cause) if isinstance(cause, ValueError) else f"{type(cause).__name__}: {_one_line(cause)}"
    node = re.search(r"^full_key: (\S+)$", str(error), re.MULTILINE)
    if node is None or message.startswith(f"{node[1]}."):
        return message
    return f"{node[1]}.{message}" if re.match(r"[A-Za-z_]\w*=", message) else f"{node[1]}: {message}"


def missing_value_message(error: MissingMandatoryValue) -> str:
    """``Missing mandatory value: data.root (add data.root=VALUE)``."""
    return f"Missing mandatory value: {error.full_key} (add {error.full_key}=VALUE)"


def to_dataclass(schema: type[T], cfg: DictConfig) -> T:
    """``cfg`` as an instance of the dataclass ``schema``, values converted to its field types.

    A missing value or one of the wrong type raises a ValueError with a one-line message naming the key.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except MissingMandatoryValue as exn:
        raise ValueError(missing_value_message(exn)) from None
    except OmegaConfBaseException as exn:
        key = getattr(exn, "full_key", None)
        raise ValueError(f"{key}: {_first_lines(exn)}" if key else _first_lines(exn)) from None


def _first_lines(*errors: BaseException | None) -> str:
    """The first line of each error's message, joined (Hydra's and OmegaConf's details and links left out)."""
    return ": ".join(str(error).strip().splitlines()[0] for error in errors if error is not None and str(error).strip())


def _one_line(error: BaseException) -> str:
    """An exception's whole message on one line."""
    return " ".join(str(error).split())
