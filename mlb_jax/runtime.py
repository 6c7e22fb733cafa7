"""Process-wide set-up shared by the command-line entry points (train, compare).

`parse_flags` turns every command-line mistake (unknown flag or config field, bad value,
unloadable config file) into one `error:` line naming the flag and the fix, exit status 2;
`relaunch` sets up the heap of XLA's buffers (`mlb_jax.allocator`: by default a restart with
huge pages) before anything else; `setup_process` quiets logs, joins a multi-host job and points
JAX at the compilation cache.
"""

import difflib
import importlib.util
import os
import re
import sys
from typing import Any, NoReturn

from absl import flags, logging

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "mlb_jax", "jax")


def relaunch() -> None:
    """Sets up the heap of XLA's CPU buffers as ``$MLB_JAX_MALLOC`` asks (`mlb_jax.allocator`).

    By default re-executes the entry point with huge pages, if they can help; 'reuse' sets the
    process up in place (`mlb_jax.allocator.setup_heap`). Call it first in ``__main__``. A bad
    ``$MLB_JAX_MALLOC`` ends the process with one `error:` line.
    """
    from mlb_jax.allocator import setup_heap

    try:
        setup_heap()
    except ValueError as err:
        fail(str(err))


def setup_process(
    distributed: bool,
    compilation_cache: str,
    *,
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
) -> None:
    """Quiet logs, optional multi-host initialisation, persistent compilation cache.

    Args:
      distributed: call `jax.distributed.initialize()` (Cloud TPU pods, multi-node GPU). On
        TPU pods, SLURM, Open MPI and Kubernetes JAX finds the job's processes by itself.
      compilation_cache: directory of the persistent XLA cache ('' disables it).
      coordinator_address: 'host:port' of process 0 ('' = detected, or $JAX_COORDINATOR_ADDRESS).
      num_processes: processes in the job (0 = detected).
      process_id: this process's index (-1 = detected).

    Raises:
      ValueError: a coordinator address, process count or id given without `distributed`.
    """
    import jax

    logging.set_verbosity(logging.ERROR)  # keep Orbax / TFDS chatter out of the output
    given = {
        "coordinator_address": coordinator_address or None,
        "num_processes": num_processes or None,
        "process_id": process_id if process_id >= 0 else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given and not distributed:
        raise ValueError(f"--{', --'.join(given)} given without --distributed; add --distributed")
    if distributed:
        jax.distributed.initialize(**given)
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ----------------------------------------------------------------------------- command line

USAGE_ERROR = 2  # exit status of every command-line mistake


def fail(message: str) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with status 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """The `flags_parser` of `absl.app.run`: parses argv; any mistake is one line, exit 2.

    absl's own parser prints a traceback for errors raised while ml_collections applies
    `--config.<field>=` overrides (an AttributeError for an unknown field) and usage text for
    the rest; here each becomes `error: --<flag>: <what is wrong> (<the fix>)`. Config files are
    loaded now, so a missing or broken one is reported here too.

    Args:
      argv: the full command line, program name first.

    Returns:
      [argv[0]]: positional arguments are refused.
    """
    try:
        rest = flags.FLAGS(argv)
        for name in _config_flag_names():
            flags.FLAGS[name].value.keys()  # surfaces a config file that failed to load
    except Exception as err:  # whatever went wrong, the user gets one line
        fail(describe_flag_error(err, argv))
    if len(rest) > 1:
        fail(f"unexpected argument {rest[1]!r}: every argument is a flag, --name=value")
    return rest


def describe_flag_error(err: Exception, argv: list[str]) -> str:
    """One line for a flag-parsing failure: the flag, what is wrong and the fix.

    Args:
      err: what `flags.FLAGS(argv)` (or loading a config file) raised.
      argv: the command line.

    Returns:
      The message, without the 'error: ' prefix.
    """
    for name in _config_flag_names():
        message = _config_override_problem(name, argv)
        if message:
            return message
    # A KeyError's str() is the repr of its argument: use the argument itself.
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err).strip()
    if isinstance(err, flags.UnrecognizedFlagError):
        flag = err.flagname or text
        known = [n for n in flags.FLAGS if "." not in n]
        close = difflib.get_close_matches(flag, known, n=1)
        hint = f"did you mean --{close[0]}?" if close else "see --help for the flags"
        return f"--{flag}: unknown flag ({hint})"
    match = re.match(r"flag --(\S+?)=None: Flag --\S+ must have a value other than None", text)
    if match:
        return f"--{match[1]} is required: pass --{match[1]}=<value>"
    match = re.match(r"Missing value for flag (--\S+)", text)
    if match:
        return f"{match[1]}: missing value: write {match[1]}=<value>"
    match = re.match(r"flag (--[^=]+)=(.*?): (.*)", text, re.S)
    if match:
        flag, value, problem = match.groups()
        return f"{flag}={value}: {problem.splitlines()[0]}{_expected(flag, argv)}"
    return f"{text.splitlines()[0] if text else type(err).__name__} (see --help)"


def _expected(flag: str, argv: list[str]) -> str:
    """' (expected a float, like the config file's 0.01)' for a config field, else ''."""
    default = _config_default(flag, argv)
    if default is None:
        return ""
    if hasattr(default, "lock"):  # a whole block: its fields are set one by one
        return f" (set its fields one by one, e.g. {flag}.<field>=<value>)"
    kind = type(default).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    return f" (expected {article} {kind}, like the config file's {default!r})"


def _config_flag_names() -> list[str]:
    """Names of the ml_collections config-file flags (e.g. 'config')."""
    # ml_collections exports no test for its flags; its config-file parser names this type.
    return [name for name in flags.FLAGS if flags.FLAGS[name].flag_type() == "config object"]


def _config_file_arg(name: str, argv: list[str]) -> str | None:
    """The value given to `--<name>=` on the command line (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load_config_file(value: str) -> Any:
    """`get_config()` of a config file, as ml_collections does ('path.py:arg' passes arg)."""
    path, *arg = value.split(":", 1)
    spec = importlib.util.spec_from_file_location("_command_line_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*arg)


def _field_paths(config: Any, prefix: str = "") -> list[str]:
    """Every dotted field path of a ConfigDict, nested blocks included."""
    out = []
    for key, value in config.items():
        out.append(f"{prefix}{key}")
        if hasattr(value, "items") and hasattr(value, "lock"):  # a nested ConfigDict
            out += _field_paths(value, f"{prefix}{key}.")
    return out


def _config_override_problem(name: str, argv: list[str]) -> str | None:
    """The first problem with `--<name>=<file>` or a `--<name>.<field>=` override, or None."""
    value = _config_file_arg(name, argv)
    if value is None:
        return None
    try:
        config = load_config_file(value)
    except Exception as err:  # any failure to load is reported the same way
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
        return f"--{name}={value}: cannot load the config file ({reason}); check the path"
    paths = _field_paths(config)
    for arg in argv:
        match = re.match(rf"--(?:no)?{re.escape(name)}\.([^=]+)", arg)
        if match and match[1] not in paths:
            close = difflib.get_close_matches(match[1], paths, n=1)
            hint = f"did you mean {close[0]}?" if close else f"see {value} for the fields"
            return f"--{name}.{match[1]}: no such field in the config ({hint})"
    return None


def _config_default(flag: str, argv: list[str]) -> Any:
    """The config file's value of `--<name>.<field>` (for 'give a float like ...'), or None."""
    for name in _config_flag_names():
        prefix = f"--{name}."
        value = _config_file_arg(name, argv)
        if flag.startswith(prefix) and value is not None:
            try:
                node = load_config_file(value)
                for key in flag[len(prefix) :].split("."):
                    node = node[key]
            except Exception:  # no default to show is fine
                return None
            return node
    return None
