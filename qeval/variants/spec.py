"""`--candidates` / `--base` text → VariantSpec: `int8`, `nf4:double_quant=true`, `gguf:q4_k_m`,
`gptq:bits=4,group=64,calib=clinical`, `gguf=path/to/model.gguf`, `gptq=path/to/checkpoint`, or a
name from configs/variants/*.yaml, each optionally with a KV-cache suffix `+kv=DTYPE`
(`gguf:q4_k_m+kv=q8_0`). What each method accepts is its module's (qeval/variants/);
nothing here names a method."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from qeval.errors import QevalInputError
from qeval.types import VariantSpec
from qeval.methods import METHODS, method


def registered(data: dict) -> dict:
    """A variant's fields with its method and engine checked against the registries (ValueError
    naming the known ones); the engine defaults to the method's own."""
    from enum import Enum

    from qeval.engines.registry import ENGINES

    name = data["method"]
    name = name.value if isinstance(name, Enum) else name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    data = {**data, "method": name}
    if "backend" not in data:
        data["backend"] = method(name).engine
    if data["backend"] not in ENGINES:
        raise ValueError(f"unknown backend {data['backend']!r}; choose from {', '.join(sorted(ENGINES))}")
    return data


def known_variants(files: Iterable[tuple[str, Path, dict]]) -> dict[str, VariantSpec]:
    """The named variants: one per (name, file, YAML data), then each registered method without
    a file of its own under its own name (a method a test or plug-in registers; `fake` excluded)."""
    specs = {}
    for name, path, data in files:
        try:
            specs[name] = check_kv(VariantSpec.model_validate(
                registered({"name": name, **data}) if "method" in data else {"name": name, **data}))
        except ValidationError as exc:
            e = exc.errors()[0]
            raise QevalInputError(f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        except ValueError as exc:
            raise QevalInputError(f"{path}: method: {exc}") from None
    for name in METHODS:
        m = method(name)
        if name not in specs and m.listed:
            specs[name] = VariantSpec(name=name, method=name, backend=m.engine,
                                      description=(m.__doc__ or "").strip().split("\n")[0])
    return specs


def _coerce(value: str) -> str | int | float | bool:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


KV_SUFFIX = re.compile(r"\+kv=([^,+]*)")  # a variant's KV-cache dtype: `gguf:q4_k_m+kv=q8_0`


def brought_prefixes() -> tuple[str, ...]:
    """Artefacts a user brings instead of having qeval make them: `<method>=<path>`."""
    return tuple(f"{name}=" for name in METHODS if method(name).brought)


def split_variants(text: str) -> list[str]:
    """`--candidates` text → one string per variant. A `key=value` piece with no variant name
    before it continues the previous variant's parameters: `gguf:q4_k_m,threads=8,int8` is two
    variants (`gguf=path`, `gptq=path`, `awq=path` are variants of their own)."""
    brought = brought_prefixes()
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name = KV_SUFFIX.sub("", piece).split(":", 1)[0]  # `int8+kv=…` starts a variant
        if out and "=" in name and not name.startswith(brought):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def brought_name(text: str, method_name: str, path: str, given: object) -> str:
    """How a brought file is named in tables and records: `name=` when the user gave one, else
    `<method>=<file or folder name>` (the full path stays in the run's config, the file's hash in
    its record)."""
    if given is None:
        return f"{method_name}={Path(path.rstrip('/')).name or path}"
    name = str(given).strip()
    if not name or any(c in name for c in ",/\\") or name != name.strip():
        raise QevalInputError(f"variant {text!r}: name={given!r} must be a non-empty name without "
                              "commas or slashes, e.g. name=mine-q4")
    return name


def split_kv(text: str) -> tuple[str, str | None]:
    """`gguf:q4_k_m+kv=q8_0` → (`gguf:q4_k_m`, `q8_0`); (text, None) without the suffix. The
    suffix may stand before the variant's other parameters (`gguf:q4_k_m+kv=q8_0,threads=2`)."""
    found = list(KV_SUFFIX.finditer(text))
    if not found:
        return text, None
    if len(found) > 1:
        raise QevalInputError(f"variant {text!r}: +kv= given {len(found)} times; give one KV-cache dtype")
    m = found[0]
    dtype = m.group(1).strip().lower()
    if not dtype:
        raise QevalInputError(f"variant {text!r}: +kv= needs a KV-cache dtype, e.g. +kv=q8_0")
    return text[:m.start()] + text[m.end():], dtype


def check_kv(variant: VariantSpec) -> VariantSpec:
    """A KV-cache dtype the variant's engine can hold (its method's `kv_cache_dtypes`)."""
    if variant.kv_cache is None:
        return variant
    m = method(variant.method)
    allowed = tuple(m.kv_cache_dtypes)
    if variant.kv_cache not in allowed:
        known = {d for n in METHODS for d in getattr(method(n), "kv_cache_dtypes", ())}
        engine = f"the {variant.backend} engine ({variant.method})"
        if variant.kv_cache not in known:
            problem = f"unknown KV-cache dtype {variant.kv_cache!r}"
        else:
            problem = f"{engine} cannot hold a {variant.kv_cache} KV cache"
        fix = (f"{engine} takes +kv={'|'.join(allowed)}" if allowed
               else f"{engine} takes no +kv=; leave the suffix out")
        raise QevalInputError(f"variant {variant.name!r}: {problem}; {fix}")
    return variant


def parse_variant(text: str, known: dict[str, VariantSpec]) -> VariantSpec:
    """One variant's text → its VariantSpec, checked by its method (no model known yet); a
    `+kv=DTYPE` suffix sets its KV-cache dtype (checked against what its engine can hold)."""
    text = text.strip()
    rest, kv = split_kv(text)
    if kv is None:
        return _parse_weights(text, known)
    spec = _parse_weights(rest, known)  # its name: the text, or a brought file's short name
    spec = spec.model_copy(update={"name": f"{spec.name}+kv={kv}", "kv_cache": kv})
    return method(spec.method).check(check_kv(spec))  # its checks again, now knowing the cache


def _parse_weights(text: str, known: dict[str, VariantSpec]) -> VariantSpec:
    name, eq, path = text.partition("=")
    if eq and text.startswith(brought_prefixes()) and name in known:
        m = method(known[name].method)
        if not path:
            example = "model.gguf" if m.brought == "file" else "checkpoint_dir"
            raise QevalInputError(f"{name}= needs a path: {name}=path/to/{example}")
        path, *rest = path.split(",")  # gptq=DIR,kernel=auto · gguf=FILE,threads=8,name=mine
        params: dict = {m.brought: path}
        for part in rest:
            key, eq2, value = part.partition("=")
            if not eq2:
                raise QevalInputError(f"variant {text!r}: parameter {part!r} must look like key=value")
            params[key.strip()] = _coerce(value.strip())
        given = brought_name(text, name, path, params.pop("name", None))
        return m.check(known[name].model_copy(update={"name": given, "params": params}))
    name, _, params_text = text.partition(":")
    if name not in known:
        raise QevalInputError(
            f"unknown variant {name!r}; choose from {', '.join(sorted(known))} "
            "(or add configs/variants/<name>.yaml)"
        )
    base = known[name]
    m = method(base.method)
    params = dict(base.params)
    for n, part in enumerate(filter(None, params_text.split(","))):
        key, eq, value = part.partition("=")
        if not eq and n == 0 and m.positional:
            params[m.positional] = part.strip().lower()  # gguf:q4_k_m
            continue
        if not eq:
            raise QevalInputError(f"variant {text!r}: parameter {part!r} must look like key=value")
        params[key.strip()] = _coerce(value.strip())
    return m.check(base.model_copy(update={"name": text.strip(), "params": params}))
