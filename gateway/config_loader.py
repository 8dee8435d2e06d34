"""Reading configuration files: YAML with the line of every key, `${ENV}`, drop-ins, errors.

Errors are for people editing YAML by hand: each names the file, the line, the
key path and what was expected, in one line, never a pydantic dump.

Drop-ins (`gateway.d/*.yaml` beside `gateway.yaml`, read in name order) let a site
keep its drivers, or its secrets' settings, in files of their own: a drop-in's
mappings merge into what came before key by key, any other value replaces the one
before it, and `drivers` lists are joined, so that a drop-in can add a driver.

Nothing here knows the gateway's models: `describe` is given the root model that
failed, so that the models (gateway.config) and the reading stay apart.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MAX_DEPTH = 50
"""Nesting deeper than any gateway configuration needs (it needs fewer than 10 levels)."""
_MAX_VALUES = 100_000
"""Values after expanding aliases: an anchor used many times over, in layers, would otherwise
expand to millions of values (the "billion laughs") and hang the gateway at start."""
KeyPath = tuple[str | int, ...]


def read_config(
    path: Path, keep_unset_env: bool = False
) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """A file and its drop-ins, merged, with `${ENV}` substituted, and the `file:line` each key
    path came from; raise `ConfigError` if one cannot be read or parsed, or the file is empty.

    `keep_unset_env`: leave `${NAME}` of unset variables as written instead of refusing them.
    """
    files = config_files(path)
    data, where = _read(path, keep_unset_env)
    if data is None:
        raise ConfigError(
            f"{path}: the file is empty; start from gateway.example.yaml (in config/ of the "
            "source, or /opt/edge-gateway/config/ where install.sh put the gateway)"
        )
    for drop_in in files[1:]:
        more, more_where = _read(drop_in, keep_unset_env)
        if more is not None:
            _merge(data, where, more, more_where)
    return data, where


def config_files(path: Path | str) -> list[Path]:
    """The main file, then its drop-ins (`<name>.d/*.yaml` and `*.yml`) in name order."""
    path = Path(path)
    drop_ins = path.with_suffix(".d")
    try:
        if not drop_ins.is_dir():
            return [path]
        found = [
            p for p in drop_ins.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file()
        ]
    except OSError as exc:
        raise ConfigError(
            f"{drop_ins}: cannot list the drop-in directory: {exc.strerror}; check that the "
            "user running the gateway may read it"
        ) from None
    return [path, *sorted(found, key=lambda p: p.name)]


def _read(path: Path, keep_unset_env: bool) -> tuple[dict[str, Any] | None, dict[KeyPath, str]]:
    """One file's data (None when it holds nothing) and the `file:line` of each key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration: {exc.strerror}; check the path, and that "
            "the user running the gateway may read it"
        ) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: the file is not UTF-8 text (byte {exc.start}, "
            f"{exc.object[exc.start : exc.start + 1]!r}); save it as UTF-8"
        ) from None
    data, lines = _parse_yaml(path, text, keep_unset_env)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of keys (gateway, amqp, ...)")
    return data, {at: f"{path}:{line}" for at, line in lines.items()}


def _merge(
    into: dict[str, Any],
    where: dict[KeyPath, str],
    more: dict[str, Any],
    more_where: dict[KeyPath, str],
    at: KeyPath = (),
) -> None:
    """Merge a drop-in's data (and where each key came from) into what was read before."""
    for key, value in more.items():
        here = (*at, key)
        before = into.get(key)
        if here == ("drivers",) and isinstance(value, list) and isinstance(before, list):
            offset = len(before)
            before.extend(value)
            for path, location in more_where.items():
                if path[:1] == here and len(path) > 1 and isinstance(path[1], int):
                    where[(*here, offset + path[1], *path[2:])] = location
        elif isinstance(value, dict) and isinstance(before, dict):
            _merge(before, where, value, more_where, here)
        else:
            into[key] = value
            for path in [path for path in where if path[: len(here)] == here]:
                del where[path]
            where.update(
                (path, location)
                for path, location in more_where.items()
                if path[: len(here)] == here
            )


def _parse_yaml(path: Path, text: str, keep_unset_env: bool) -> tuple[Any, dict[KeyPath, int]]:
    """YAML to plain data plus the line of every key path, for error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        mark = getattr(exc, "problem_mark", None)
        if problem == _NO_COLON:  # the key it was reading, not where it gave up
            mark = getattr(exc, "context_mark", None) or mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        hint = next((hint for start, hint in _YAML_HINTS if problem.startswith(start)), "")
        raise ConfigError(f"{where}: invalid YAML: {problem}{hint}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError(
            f"{path}: nested too deeply to read (more than {_MAX_DEPTH} levels); "
            "a gateway configuration needs fewer than 10"
        ) from None
    lines: dict[KeyPath, int] = {}
    constructor = yaml.SafeLoader("")

    def scalar(node: yaml.Node) -> Any:
        try:
            return constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: cannot read the value {node.value!r}: "
                f"{getattr(exc, 'problem', None) or exc}"
            ) from None

    def build(node: yaml.Node, at: KeyPath) -> Any:
        lines.setdefault(at, node.start_mark.line + 1)
        if len(at) > _MAX_DEPTH:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: nested more than {_MAX_DEPTH} levels "
                "deep; a gateway configuration needs fewer than 10"
            )
        if len(lines) > _MAX_VALUES:
            raise ConfigError(
                f"{path}: more than {_MAX_VALUES:,} values once aliases (*name) are expanded; "
                "use each anchor a few times, not in layers of aliases to aliases"
            )
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            merged: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                    for source in _merge_sources(path, value_node):
                        for key, value in build(source, at).items():
                            merged.setdefault(key, value)
                    continue
                key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str | int):
                    raise ConfigError(
                        f"{path}:{key_node.start_mark.line + 1}: {_dotted(at)}: "
                        "keys must be plain words, not lists or mappings"
                    )
                if key in result:
                    raise ConfigError(
                        f"{path}:{key_node.start_mark.line + 1}: "
                        f"{_dotted((*at, key))}: the key appears twice"
                    )
                lines[(*at, key)] = key_node.start_mark.line + 1
                result[key] = build(value_node, (*at, key))
            return {**merged, **result}
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*at, i)) for i, item in enumerate(node.value)]
        value = scalar(node)
        if isinstance(value, str):
            value = _substitute_env(value, f"{path}:{node.start_mark.line + 1}", at, keep_unset_env)
        return value

    return (build(root, ()) if root is not None else None), lines


_NO_COLON = "could not find expected ':'"
_YAML_HINTS = (
    (_NO_COLON, "; a key needs a space after its colon: port: 1883"),
    ("found character '\\t'", "; indent with spaces, not tabs"),
    ("found character", "; a value that starts with this character needs quotes: '%RH'"),
    (
        "found unknown escape character",
        "; in double quotes a backslash starts an escape: put regular expressions in single "
        "quotes, '\\d+'",
    ),
    (
        "expected <block end>",
        "; check this line's indentation, and quote a value that starts with { or [: "
        "'{site}.{device}'",
    ),
)
"""Hints for PyYAML's most common complaints, by how the complaint begins."""


def _merge_sources(path: Path, node: yaml.Node) -> list[yaml.Node]:
    """The mappings a YAML merge key (`<<`) names: one alias or a list of them."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not all(isinstance(source, yaml.MappingNode) for source in sources):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1}: '<<' must name a mapping (<<: *anchor)"
        )
    return list(sources)


def _substitute_env(value: str, where: str, at: KeyPath, keep_unset: bool) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if keep_unset:
            return match.group(0)
        if at[-1:] == ("routing_key",):  # ${site} for {site}: a shell habit
            raise ConfigError(
                f"{where}: {_dotted(at)}: ${{{name}}} is an environment reference; routing "
                f"key placeholders are written {{{name}}}"
            )
        raise ConfigError(
            f"{where}: {_dotted(at)}: environment variable {name} is not set; "
            f"set it or write ${{{name}:-default}}"
        )

    leftover = _ENV_REF.sub("", value)
    if "${" in leftover and not keep_unset:  # `${NAME:x}`, `${NAME-x}`, `${ NAME }`, a lone `${`
        written = leftover[leftover.index("${") :]
        if "}" not in written:
            raise ConfigError(
                f"{where}: {_dotted(at)}: {written!r} has no closing '}}': write ${{NAME}}"
            )
        written = written.split("}")[0] + "}"
        raise ConfigError(
            f"{where}: {_dotted(at)}: {written!r} is not an environment reference: "
            "write ${NAME}, or ${NAME:-default} for a default"
        )
    return _ENV_REF.sub(replace, value)


def _dotted(at: KeyPath) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(
    fallback: str, data: Any, where: dict[KeyPath, str], exc: ValidationError, root: type[BaseModel]
) -> str:
    """One line per problem: `file:line: key.path: what is wrong (got X)`; `root` is the model
    validated, which says what keys an unknown one could have meant."""
    located = [
        (
            _data_path(
                data,
                # A validator of a list can name the item at fault: ctx["at"], below its loc.
                (*error["loc"], *error.get("ctx", {}).get("at", ())),
                error["type"] in ("missing", "extra_forbidden"),
            ),
            error,
        )
        for error in exc.errors()
    ]
    messages = []
    located.sort(key=lambda item: _line_of(item[0], where))  # in the file's order
    for at, error in located:
        if any(len(other) > len(at) and other[: len(at)] == at for other, _ in located):
            continue  # a union's other branch failing less specifically: noise
        location = next(
            (where[at[:n]] for n in range(len(at), -1, -1) if at[:n] in where), fallback
        )
        message = f"{location}: {_dotted(at)}: {_explain(error, data, at, root)}"
        if message not in messages:
            messages.append(message)
    return "\n".join(messages)


def _line_of(at: KeyPath, where: dict[KeyPath, str]) -> tuple[str, int]:
    """(file, line) where a path's nearest written key is, to sort messages by."""
    for n in range(len(at), -1, -1):
        if at[:n] in where:
            file, _, line = where[at[:n]].rpartition(":")
            return file, int(line)
    return "", 0


def _data_path(data: Any, loc: tuple[str | int, ...], key_error: bool) -> KeyPath:
    """Pydantic's error location without union tags, so it matches the YAML's keys.

    `key_error`: the error is about a key itself (missing or unknown), so the last
    location part names a key that is not in the data.
    """
    at: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif i < len(loc) - 1 or not isinstance(node, dict) or not key_error:
            continue  # a discriminated union's tag, not a key in the file
        at.append(part)
    return tuple(at)


def _explain(error: Any, data: Any, at: KeyPath, root: type[BaseModel]) -> str:
    kind: str = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        elsewhere = _key_elsewhere(str(at[-1]), data, at[:-1], root)
        if elsewhere:
            return f"unknown key here; {elsewhere}"
        allowed = _allowed_keys(data, at[:-1], root)
        hint = difflib.get_close_matches(str(at[-1]), allowed, n=1)
        if hint:
            return f"unknown key; did you mean {hint[0]!r}?"
        return "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = error["ctx"]
        key = ctx["discriminator"].strip("'")
        return f"unknown {key} {ctx['tag']!r}; expected one of: {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        key = error["ctx"]["discriminator"].strip("'")
        return f"the key {key!r} is missing ({_TAG_HINTS.get(key, '')})"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    got = error.get("input")
    if kind in ("model_type", "dict_type", "list_type", "tuple_type") and got is None:
        empty = "{}" if kind in ("model_type", "dict_type") else "[]"
        return (
            "is empty (its lines commented out?): remove the key to take the defaults, "
            f"or write {empty}"
        )
    if kind == "model_type" and not isinstance(got, dict):
        return f"expected keys under it, not {got!r}" + _example(data, at, root, got)
    if kind in ("byte_size", "byte_size_unit"):
        return (
            f"{got!r} is not a size: write a whole number and a unit, e.g. 512MiB or 2GB "
            "(KiB, MiB, GiB are powers of 1024; KB, MB, GB of 1000)"
        )
    if kind == "string_pattern_mismatch" and error["ctx"]["pattern"] in _PATTERNS:
        return f"{got!r}: {_PATTERNS[error['ctx']['pattern']]}"
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return msg[0].lower() + msg[1:] + shown + _quoting_hint(kind, got)


_PATTERNS = {
    r"^[A-Za-z0-9_.-]+$": "use only letters A-Z a-z, digits and _ . - (no spaces)",
    r"^[A-Za-z0-9_.:-]+$": "use only letters A-Z a-z, digits and _ . : - (no spaces)",
    r"^[0-9a-fA-F]{4}$": "write 4 hex digits as lsusb shows them, e.g. '2341' (no 0x)",
    r"^hci[0-9]+$": "write the adapter as hciconfig names it: hci0, hci1, ...",
}


def _example(data: Any, at: KeyPath, root: type[BaseModel], got: Any) -> str:
    """How the value would be written as the mapping expected: under its first required key,
    or `{}` for all defaults."""
    model = _model_at(data, at, root)
    if model is None:
        return ""
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    if not required:
        return ": write {} for the defaults, or the keys you need"
    return f": e.g. {{{required[0]}: {got}}}"


def _quoting_hint(kind: str, got: Any) -> str:
    """Where YAML read an unquoted text as something else: what quoting it would give."""
    if kind != "string_type":
        return ""
    if isinstance(got, dict) and len(got) == 1 and None in got.values():
        text = f"{{{next(iter(got))}}}"
        return f"; unquoted, YAML reads {text} as a mapping: write '{text}'"
    if isinstance(got, bool | int | float):
        return (
            "; YAML read it as a number or true/false (a leading 0 even as octal): put it in "
            "quotes to keep it as written"
        )
    return ""


_TAG_HINTS = {
    "type": "for a driver: mqtt, serial or ble",
    "protocol": "for a serial driver: lines, nmea or modbus-rtu",
}


def _allowed_keys(data: Any, at: KeyPath, root: type[BaseModel]) -> list[str]:
    """The keys the model accepts at a path, for 'unknown key' hints."""
    model = _model_at(data, at, root)
    return sorted(model.model_fields) if model is not None else []


def _model_at(data: Any, at: KeyPath, root: type[BaseModel]) -> Any:
    """The model that a path's value is validated as, or None."""
    found = _annotation_at(data, at, root)
    return _model_in(*found) if found else None


def _annotation_at(data: Any, at: KeyPath, root: type[BaseModel]) -> tuple[Any, Any] | None:
    """The annotation a path's value is validated against, and the value; None if unknown."""
    annotation: Any = root
    node = data
    for part in at:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        model = _model_in(annotation, node)
        container = _container(annotation)
        if container is not None:
            annotation = get_args(container)[-1]  # a user's key or a list index
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            return None
    return annotation, node


def _key_elsewhere(key: str, data: Any, at: KeyPath, root: type[BaseModel]) -> str | None:
    """Where an unknown key belongs instead: in a section below, or in another driver type."""
    found = _annotation_at(data, at, root)
    model = _model_in(*found) if found else None
    if found is None or model is None:
        return None
    below = _holder(key, model)
    if below:
        return f"{key!r} belongs under {below!r}"
    holders = [(_holder(key, other), other) for other in _models(found[0]) if other is not model]
    for nested in (False, True):  # drivers that have the key themselves, else below
        kinds = [
            _driver_kind(other) + (f" (under {under!r})" if under else "")
            for under, other in holders
            if under is not None and bool(under) == nested and _driver_kind(other)
        ]
        if kinds:
            return f"{key!r} is a key of drivers with {' or '.join(kinds)}"
    return None


def _driver_kind(model: type[BaseModel]) -> str:
    """`type: serial, protocol: lines`: the discriminators of a driver model, one value each."""
    return ", ".join(
        f"{tag}: {get_args(model.model_fields[tag].annotation)[0]}"
        for tag in ("type", "protocol")
        if tag in model.model_fields and len(get_args(model.model_fields[tag].annotation)) == 1
    )


def _holder(key: str, model: type[BaseModel]) -> str | None:
    """Where a model takes a key: itself (the empty name), one of its fields' models (that
    field's name), or not at all (None)."""
    if key in model.model_fields:
        return ""
    for name, field in model.model_fields.items():
        if any(key in inner.model_fields for inner in _models(field.annotation)):
            return name
    return None


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Every model an annotation names, through unions, lists and `Annotated`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


def _container(annotation: Any) -> Any:
    """`dict[...]` or `list[...]` inside an annotation like `dict[str, X] | None`, else None."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) in (dict, list):
            return candidate
    return None


def _model_in(annotation: Any, node: Any) -> Any:
    """The model an annotation like `X | None`, `X | str` or a driver union means for `node`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (dict, list):
        return None
    models = [m for m in (_model_in(arg, node) for arg in get_args(annotation)) if m is not None]
    if isinstance(node, dict) and len(models) > 1:
        for candidate in models:
            tags = [
                (key, candidate.model_fields[key].annotation)
                for key in ("type", "protocol")
                if key in candidate.model_fields
            ]
            if tags and all(node.get(key) in get_args(tag) for key, tag in tags):
                return candidate
    return models[0] if models else None
