"""The method interface every plugin implements, and the host-side helpers around it.

A method is a small object: a name, an integer size knob (or None), whether it can merge
into the base weights, a default learning rate, an options dataclass, and ``apply``.
The host, not the method, makes the task head trainable and counts parameters, so the
head is the same for every method and is counted separately.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from .errors import PeftbenchError, PluginError, PluginFailure, closest


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


class Method(ABC):
    """Base class of a fine-tuning method. Subclass it, set the class attributes, write
    ``apply``; override ``merge`` for mergeable methods."""

    name: ClassVar[str]
    #: Name of the integer size knob (``"r"``, ``"bottleneck"``, ...), None for fixed-size methods.
    knob: ClassVar[str | None] = None
    #: Knob value used when neither --knob nor --budget says otherwise.
    default_knob: ClassVar[int | None] = None
    #: Whether ``merge`` folds the method into the base weights (zero added latency).
    mergeable: ClassVar[bool] = False
    #: Default AdamW learning rate, and where it comes from.
    default_lr: ClassVar[float] = 1e-3
    lr_reference: ClassVar[str] = ""
    #: Bump when a change to the method changes its results; enters every run id.
    version: ClassVar[int | str] = 1
    #: True for a method meant to train nothing of its own (a linear probe: the head only).
    probe: ClassVar[bool] = False
    #: Under ``--nproc N`` (DDP): the same parameters take part in every training step (DDP's
    #: ``static_graph``). False for a method whose used parameters change between steps (layer drop,
    #: routing, parameters frozen mid-training): DDP then searches each step's graph for unused ones.
    static_graph: ClassVar[bool] = True
    #: A frozen dataclass of options; unknown keys are rejected. May be a ``functools.cached_property``
    #: returning one (built on first use, e.g. from a library's config class that is slow to import).
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""

    plugin: str = "?"  # set by the plugin manager at registration

    # -- the contract ------------------------------------------------------------------
    @abstractmethod
    def apply(self, model: nn.Module, knob_value: int | None, **options) -> nn.Module:
        """Freeze the base model and insert this method's trainable parameters."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Return the model to use for inference; for mergeable methods, a plain model
        with the method folded into the base weights."""
        return model

    def on_train_start(self, model: nn.Module, total_steps: int):
        """Called once before training. May return ``after_step(step)``, called after every
        optimizer step while the gradients are still there (e.g. AdaLoRA's rank allocation)."""
        return None

    def finalize(self, model: nn.Module) -> None:
        """Called once after training (e.g. fold a reparameterisation)."""

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to restore the tuned model (method + head)."""
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        result = model.load_state_dict(dict(state), strict=False)
        if result.unexpected_keys:
            raise PeftbenchError(
                f"{self.name}: checkpoint has tensors the model lacks: {result.unexpected_keys[:3]}; "
                "apply the method with the same options before loading"
            )

    def head_parameter_names(self, model: nn.Module) -> set[str]:
        """Names of the task-head parameters (trained by every method, counted apart)."""
        return head_parameter_names(model)

    def extra_sequence_length(self, model: nn.Module) -> int:
        """Extra key/value positions attention sees (prefix-tuning's prefix length)."""
        return 0

    # -- helpers for the host ------------------------------------------------------------
    def options(self, **given) -> Any:
        """Parse options (strings from the CLI or typed values) into ``self.Options``."""
        return parse_options(self._options_class(), given, owner=f"method {self.name}")

    def _options_class(self) -> type:
        if not dataclasses.is_dataclass(self.Options):
            raise PluginError(f"method {self.name}: Options must be a dataclass")
        return self.Options

    def check_knob(self, value) -> int | None:
        if self.knob is None:
            if value is not None:
                raise PeftbenchError(f"method {self.name} has no size knob; drop it from --knob")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PeftbenchError(
                f"method {self.name}: {self.knob} must be a positive integer, got {value!r}; e.g. --knob {self.name}=8"
            )
        return value

    def validate(self) -> None:
        """Checked once at registration."""
        if self.knob is not None and not isinstance(self.knob, str):
            raise PluginError(f"method {self.name}: knob must be a string or None")
        if (self.knob is None) != (self.default_knob is None):
            raise PluginError(f"method {self.name}: set default_knob exactly when the method has a knob")
        if self.knob is not None and not (isinstance(self.default_knob, int) and not isinstance(self.default_knob, bool)
                                          and self.default_knob > 0):
            raise PluginError(f"method {self.name}: default_knob must be a positive int, got {self.default_knob!r}")
        if not (isinstance(self.default_lr, float) and self.default_lr > 0):
            raise PluginError(f"method {self.name}: default_lr must be a positive float")
        if not isinstance(inspect.getattr_static(self, "Options"), functools.cached_property):
            self._options_class()  # one built on first use is checked there (options())
            try:  # the defaults must parse as a user's options would (a Literal's default among its values)
                self.options(**{f.name: f.default for f in dataclasses.fields(self.Options)
                                if f.default is not dataclasses.MISSING})
            except PeftbenchError as e:
                raise PluginError(f"method {self.name}: a default of its Options is invalid ({e}); fix the "
                                  "Options dataclass") from e
        if not isinstance(self.version, (int, str)) or isinstance(self.version, bool):
            raise PluginError(f"method {self.name}: version must be an int or a str")
        for flag in ("mergeable", "probe", "static_graph"):
            if not isinstance(getattr(self, flag), bool):
                raise PluginError(f"method {self.name}: {flag} must be True or False, got {getattr(self, flag)!r}")


# -- options ------------------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value, typ, key: str, owner: str):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", ""}):
            return None
        return _coerce(value, inner[0], key, owner)
    if origin is typing.Literal:
        for allowed in args:  # the CLI gives strings: compare as the allowed value's type
            try:
                if allowed == (value if isinstance(value, type(allowed)) else _coerce(value, type(allowed), key, owner)):
                    return allowed
            except PeftbenchError:
                continue
        raise PeftbenchError(f"{owner}: option {key}={value!r} must be one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        out = [_coerce(v.strip() if isinstance(v, str) else v, inner, key, owner) for v in items if v != ""]
        return tuple(out) if origin is tuple else out
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        if isinstance(value, typ):
            return value
        for member in typ:
            if str(value) in (member.name, str(member.value)):
                return member
        raise PeftbenchError(f"{owner}: option {key}={value!r} must be one of {', '.join(m.name for m in typ)}")
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in _TRUE | _FALSE:
                return str(value).lower() in _TRUE
            raise ValueError
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise PeftbenchError(f"{owner}: option {key}={value!r} is not a valid {getattr(typ, '__name__', typ)}")


def parse_options(cls, given: Mapping[str, Any], owner: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in given.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise PeftbenchError(f"{owner}: unknown option {key!r}{closest(key, fields)}; valid options: {valid}")
        values[key] = _coerce(value, hints[key], key, owner)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PeftbenchError(f"{owner}: {e}") from e


def non_default_options(opts) -> dict:
    """The options that differ from the dataclass defaults (for labels)."""
    out = {}
    for f in dataclasses.fields(opts):
        default = f.default if f.default is not dataclasses.MISSING else None
        value = getattr(opts, f.name)
        if value != default:
            out[f.name] = value
    return out


def options_dict(opts) -> dict:
    """The options as JSON values (what a run spec holds): tuples as lists, enums by name."""
    def plain(v):
        if isinstance(v, enum.Enum):
            return v.name
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {k: plain(v) for k, v in dataclasses.asdict(opts).items()}


# -- freezing, the head, counting --------------------------------------------------------
def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def is_causal_lm(model: nn.Module) -> bool:
    """A language model whose output layer is the vocabulary (``*ForCausalLM``, also wrapped by
    peft): its LM head belongs to the frozen base, there is no new task head."""
    return any(cls.__name__.endswith(("ForCausalLM", "LMHeadModel")) for cls in type(model).__mro__)


def head_parameter_names(model: nn.Module) -> set[str]:
    """Parameters outside the base model (``model.base_model_prefix``): the task head (none for a
    causal LM)."""
    if is_causal_lm(model):
        return set()
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise PeftbenchError(
            f"{type(model).__name__} has no base model under base_model_prefix; use a transformers "
            "*ForSequenceClassification or *ForCausalLM model"
        )
    return {n for n, _ in model.named_parameters() if not n.startswith(prefix + ".")}


def base_parameter_count(model: nn.Module) -> int:
    head = head_parameter_names(model)
    return sum(p.numel() for n, p in model.named_parameters() if n not in head)


@dataclass(frozen=True)
class ParamCounts:
    method: int  # the method's own trainable parameters (what a budget counts)
    head: int  # the task head, trained by every method
    total: int  # method + head
    base: int  # parameters of the base model before the method (head excluded)
    # the method's trainable parameters' names (see trainable_where); counts compare equal without it
    where: tuple[str, ...] = field(default=(), compare=False)

    @property
    def pct(self) -> float:
        """The method's own parameters as % of the base model."""
        return 100.0 * self.method / self.base


def apply_method(method: Method, model: nn.Module, knob_value, options: Mapping | None = None):
    """Apply a method, make the head trainable, and count. Returns (model, ParamCounts).
    A PeftbenchError raised by the method (it cannot handle this model or these options) passes
    through; any other exception from its ``apply`` becomes a PluginFailure naming the method."""
    knob_value = method.check_knob(knob_value)
    base = base_parameter_count(model)
    try:
        result = method.apply(model, knob_value, **dict(options or {}))
    except PeftbenchError:
        raise
    except Exception as e:
        raise PluginFailure("method", method.name, method.plugin, "apply()", e) from e
    if not isinstance(result, nn.Module):
        raise PluginError(
            f"method {method.name} (plugin {method.plugin}): apply() returned {type(result).__name__}, not the "
            "model; end apply with `return model`"
        )
    model = result
    head = method.head_parameter_names(model)
    for n, p in model.named_parameters():
        if n in head:
            p.requires_grad_(True)
    counts = count_parameters(model, base, head)
    if counts.method == 0 and not method.probe:
        raise PluginError(
            f"method {method.name} (plugin {method.plugin}) leaves no trainable parameter of its own: it would train "
            "the task head only; make its parameters trainable in apply(), or set probe = True if it is a linear probe"
        )
    return model, counts


def trainable_where(model: nn.Module, head: set[str]) -> list[str]:
    """Where a method's trainable parameters are, for the record: their names with layer numbers as *
    (``bert.encoder.layer.*.attention.self.query.lora_A``), the head's left out: what a method adapted
    on this model (peft's default targets, a role resolved to module names), not only how much."""
    return sorted({re.sub(r"\.\d+(?=\.)", ".*", n) for n, p in model.named_parameters()
                   if p.requires_grad and n not in head})


def count_parameters(model: nn.Module, base: int, head: set[str]) -> ParamCounts:
    method_n = head_n = 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            if n in head:
                head_n += p.numel()
            else:
                method_n += p.numel()
    return ParamCounts(method=method_n, head=head_n, total=method_n + head_n, base=base,
                       where=tuple(trainable_where(model, head)))
