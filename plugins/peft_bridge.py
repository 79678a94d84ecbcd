"""Hugging Face ``peft`` methods as peftbench methods named ``peft-<type>``.

Optional: ``pip install "peftbench[peft]"``. Only peft's public API is used: ``get_peft_model``
with the method's config, ``merge_and_unload`` for the merged latency. Tuner methods (LoRA,
IA3, LoHa, ...) modify the transformers model in place and the host keeps working on that
model; prompt-learning methods (prefix, prompt, p-tuning) return peft's
``PeftModelForSequenceClassification``, whose copy of the head is the trained head.

Options are the peft config's own fields (``peft-lora[lora_alpha=32,target_modules=query,value]``);
the size knob (``r``, ``num_virtual_tokens``, ...) is set by --knob or --budget.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import types
from dataclasses import dataclass
from typing import Optional

import peftbench
from peftbench.arch import head_modules
from peftbench.errors import PluginError, UnsupportedModel, first_line
from peftbench.method import head_parameter_names, is_causal_lm


def available() -> bool:
    return importlib.util.find_spec("peft") is not None


@dataclass(frozen=True)
class Spec:
    config: str  # peft config class
    knob: str | None
    default_knob: int | None
    mergeable: bool
    lr: float
    prompt: bool = False  # prompt-learning (needs PeftModelForSequenceClassification)
    defaults: tuple = ()  # (field, value) defaults that differ from peft's
    description: str = ""
    wrapper: bool = False  # train through peft's model wrapper (its forward adds to the loss)
    hidden: tuple = ()  # config fields that are not options
    construct: tuple = ()  # (field, value) needed to build the config, reset at training start
    allocator: bool = False  # AdaLoRA: update_and_allocate after every optimizer step
    derive: object = None  # kwargs -> kwargs: defaults that depend on the knob
    constants: tuple = ()  # parameter names (parts) that are never trained


# Each was checked on BERT, GPT-2 and LLaMA tiny models (tests/test_method_contract.py);
# a method that cannot apply to an architecture says so in one line.
SPECS = {
    "lora": Spec("LoraConfig", "r", 8, True, 5e-4, defaults=(("lora_alpha", 16), ("lora_dropout", 0.1)),
                 description="peft LoRA"),
    "ia3": Spec("IA3Config", None, None, True, 3e-3, description="peft IA3: learned rescaling vectors"),
    "loha": Spec("LoHaConfig", "r", 8, True, 5e-4, defaults=(("alpha", 16),), description="peft LoHa (Hadamard product)"),
    "lokr": Spec("LoKrConfig", "r", 8, True, 5e-4, defaults=(("alpha", 16),), description="peft LoKr (Kronecker product)"),
    "vera": Spec("VeraConfig", "r", 256, True, 4e-3, description="peft VeRA: shared random projections, scaling vectors"),
    "fourierft": Spec("FourierFTConfig", "n_frequency", 1000, True, 5e-2, description="peft FourierFT"),
    "hra": Spec("HRAConfig", "r", 8, True, 1e-3, description="peft HRA: Householder reflections"),
    # AdaLoRA: the knob is the initial rank (what is trained at the start); the rank allocator
    # prunes to target_r by the end; its orthogonal regulariser is added in peft's forward
    # lr, alpha and orth_reg_weight: the AdaLoRA authors' SST-2 script (8e-4, 16, 0.1)
    "adalora": Spec("AdaLoraConfig", "init_r", 12, True, 8e-4, wrapper=True, hidden=("r", "total_step"),
                    construct=(("total_step", 10**9),), allocator=True,
                    defaults=(("target_r", None), ("lora_alpha", 16), ("orth_reg_weight", 0.1)),
                    derive=lambda kw: _adalora_target(kw), constants=(".ranknum.",),
                    description="peft AdaLoRA: SVD-form LoRA with adaptive rank allocation"),
    "prefix": Spec("PrefixTuningConfig", "num_virtual_tokens", 20, False, 1e-2, prompt=True,
                   description="peft prefix-tuning (past_key_values)"),
    "prompt": Spec("PromptTuningConfig", "num_virtual_tokens", 20, False, 1e-2, prompt=True,
                   description="peft prompt tuning (soft prompt tokens)"),
    "p-tuning": Spec("PromptEncoderConfig", "num_virtual_tokens", 20, False, 1e-2, prompt=True,
                     defaults=(("encoder_hidden_size", 128),), description="peft P-tuning (prompt encoder)"),
}


def _adalora_target(kw):
    """target_r defaults to 2/3 of the initial rank (peft's defaults 8 of 12) and may not exceed it."""
    if kw.get("target_r") is None:
        kw["target_r"] = max(1, round(kw["init_r"] * 2 / 3))
    elif kw["target_r"] > kw["init_r"]:
        raise UnsupportedModel(f"peft-adalora: target_r={kw['target_r']} exceeds init_r={kw['init_r']}; lower target_r")
    return kw


# Config fields that are not user options (set by peft or by peftbench).
_RESERVED = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
             "inference_mode", "num_transformer_submodules", "num_attention_heads", "num_layers", "token_dim",
             "modules_to_save"}
_SIMPLE = (bool, int, float, str)


def _option_fields(config_cls, knob, defaults, hidden=()):
    """A frozen dataclass of the config's simple fields (bool/int/float/str/list of str)."""
    fields = []
    overrides = dict(defaults)
    for f in dataclasses.fields(config_cls):
        if f.name in _RESERVED or f.name == knob or f.name in hidden:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        default = overrides.get(f.name, default)
        annotation = str(f.type)
        if isinstance(default, _SIMPLE):
            typ = type(default)
        elif default is None and "list[str]" in annotation.replace("List", "list"):
            typ = Optional[tuple[str, ...]]
        elif default is None and any(t in annotation for t in ("int", "float", "str", "bool")):
            typ = Optional[next(t for t in (int, float, bool, str) if t.__name__ in annotation)]
        elif isinstance(default, list) and all(isinstance(v, str) for v in default):
            typ, default = tuple[str, ...], tuple(default)
        else:
            continue  # nested configs, dicts: not exposed
        fields.append((f.name, typ, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{config_cls.__name__}Options", fields, frozen=True)


def _untie_adapted(model) -> None:
    """An adapted layer whose weight another module shares (an LM head tied to the input embeddings):
    peft's merge adds ΔW to the shared matrix, so to the embeddings too (logits off by ~6 on a tiny
    LLaMA, which the merge check fails); the layer gets its own copy first, the embeddings keep W0."""
    from collections import Counter

    from torch import nn

    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        weight = getattr(base, "weight", None)
        if isinstance(weight, nn.Parameter) and shared[id(weight)] > 1:
            base.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)


_EMBEDS_PROMPT = ("PromptTuningConfig", "PromptEncoderConfig")  # peft prepends the prompt as input embeddings


def _pools_last_token(model) -> bool:
    """A decoder classifier (GPT-2, LLaMA, BLOOM, ...): its forward, or a parent class's, finds each row's
    last token by the pad token in ``input_ids`` (an encoder's pools its first token)."""
    for cls in type(model).__mro__:  # a class may hand its forward to a parent's (transformers' generic classifier)
        if "forward" not in vars(cls):
            continue
        try:
            if "pad_token_id" in inspect.getsource(cls.forward):
                return True
        except (OSError, TypeError):  # no source to read (a compiled or dynamically built class)
            continue
    return False


def _forward_past_key_values_as_cache(self, *args, past_key_values=None, **kwargs):
    if past_key_values is not None:
        kwargs["cache"] = past_key_values
    return type(self).forward(self, *args, **kwargs)


def _accept_past_key_values(module) -> None:
    """transformers 5.24 renamed the models' ``past_key_values`` argument to ``cache`` (the old
    name stays accepted, deprecated, until 5.40), but peft <= 0.21.2 picks the module to call for
    prefix tuning by looking for ``past_key_values`` in ``forward``'s signature and refuses
    otherwise. Where the signature has ``cache`` and not ``past_key_values``, give this instance a
    forward that takes ``past_key_values`` and passes it on as ``cache``: the same call peft makes
    under transformers <= 5.23 (a bound method, so copies of the model rebind it)."""
    params = inspect.signature(type(module).forward).parameters
    if "cache" in params and "past_key_values" not in params:
        module.forward = types.MethodType(_forward_past_key_values_as_cache, module)


def _peft_version() -> str:
    try:
        return importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:  # importable without its metadata (a source checkout)
        import peft

        return peft.__version__


class PeftMethod(peftbench.Method):
    """Registering imports nothing of peft (0.6 s, paid by every process that loads the plugins: a
    sweep's plan, each run): its config class and the options read from it come on first use."""

    def __init__(self, kind: str, spec: Spec):
        self.name = f"peft-{kind}"
        self.spec = spec
        self.knob = spec.knob
        self.default_knob = spec.default_knob
        self.mergeable = spec.mergeable
        self.default_lr = spec.lr
        self.lr_reference = "peft examples / the method's paper"
        self.version = f"1+peft{_peft_version()}"  # peft does the work: its release is part of the method
        self.description = spec.description + f" ({spec.config})"

    @functools.cached_property
    def config_cls(self):
        try:
            import peft

            return getattr(peft, self.spec.config)
        except (ImportError, AttributeError) as e:  # what registering checked when it imported peft
            raise PluginError(f"method {self.name}: peft {_peft_version()} has no usable {self.spec.config} "
                              f"({first_line(e)}); install a peft release that has it (pip install -U peft)") from None

    @functools.cached_property
    def Options(self):  # noqa: N802 (the Method attribute's name)
        return _option_fields(self.config_cls, self.spec.knob, self.spec.defaults, self.spec.hidden)

    def apply(self, model, knob_value, **options):
        import peft

        opts = self.options(**options)
        kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
        if self.knob:
            kwargs[self.knob] = knob_value
        kwargs.update(self.spec.construct)
        if self.spec.derive:
            kwargs = self.spec.derive(kwargs)
        if self.spec.prompt or self.spec.wrapper:
            kwargs["task_type"] = "CAUSAL_LM" if is_causal_lm(model) else "SEQ_CLS"
        if kwargs.get("target_modules") == ["all-linear"]:  # peft's keyword, a string (a list names modules)
            kwargs["target_modules"] = "all-linear"
        if kwargs.get("target_modules"):
            self._keep_out_of_head(model, kwargs)
        if self.spec.prompt and is_causal_lm(model):
            # checked with tests/test_method_contract.py's generation check: generate's logits differ from
            # peft's own forward (by ~0.2 at the first token on GPT-2, prefix on LLaMA) and BLOOM fails outright
            raise UnsupportedModel(f"{self.name}: peft {peft.__version__}'s prompt learning does not generate what its "
                                   "forward computes on causal LMs here; use the native prefix (or lora, adapter) "
                                   "for generation tasks")
        if self.spec.config in _EMBEDS_PROMPT and not is_causal_lm(model) and _pools_last_token(model):
            # checked: the same row alone and with 3 pad tokens after it gave logits 0.09-0.19 apart (tiny GPT-2, LLaMA)
            raise UnsupportedModel(f"{self.name}: peft feeds the prompt as inputs_embeds, where {type(model).__name__} "
                                   "cannot find each row's last token (it reads the last position, padding in a "
                                   "right-padded batch), so a prediction would depend on its batch's padding; use "
                                   "peft-prefix or the native prefix on decoder classifiers")
        if self.spec.config == "PrefixTuningConfig" and not is_causal_lm(model):  # peft's SEQ_CLS path checks
            for module in {model, getattr(model, "base_model", model)}:
                _accept_past_key_values(module)
        try:
            config = self.config_cls(**kwargs)
            peft_model = peft.get_peft_model(model, config)
        except Exception as e:
            raise UnsupportedModel(
                f"{self.name}: peft cannot apply {self.spec.config} to {type(model).__name__}: {first_line(e)}"
            ) from None
        for n, p in peft_model.named_parameters():
            if any(c in n for c in self.spec.constants):
                p.requires_grad_(False)  # peft leaves them trainable when built on the meta device
        if self.spec.prompt or self.spec.wrapper:
            return peft_model
        # Tuners changed ``model`` in place; keep the peft wrapper for merge_and_unload, outside
        # the module tree (no registration, no recursion).
        object.__setattr__(model, "_peftbench_peft", peft_model)
        return model

    def _keep_out_of_head(self, model, kwargs) -> None:
        """The task head's modules that peft's list of ``target_modules`` names (peft's rule: a module's
        name or its last parts; RoBERTa's ``classifier.dense`` for ``dense``) go into ``exclude_modules``,
        as the native methods leave the head out: every method trains the head in full and counts it
        apart, so an update there would hide in the head's count. ``target_modules`` stays as given (peft's
        ``layers_to_transform`` and IA3's ``feedforward_modules`` read it)."""
        targets = kwargs["target_modules"]
        if targets == "all-linear":  # peft leaves out only an LM's output layer: a classifier's head would be adapted
            import torch
            from transformers.pytorch_utils import Conv1D

            hits = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
            targets = [targets]
        else:
            hits = [n for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
        head = sorted(head_modules(model, hits))
        if not head:
            return  # peft matches it as given (or says what matched nothing)
        if not set(hits) - set(head):
            raise UnsupportedModel(f"{self.name}: target_modules={','.join(targets)} names only the task head "
                                   f"({', '.join(head)}), which every method trains in full; "
                                   "name layers of the base model")
        if "exclude_modules" not in {f.name for f in dataclasses.fields(self.config_cls)}:
            raise UnsupportedModel(f"{self.name}: target_modules={','.join(targets)} also names the task head "
                                   f"({', '.join(head)}), which every method trains in full, and peft's "
                                   f"{self.spec.config} cannot exclude modules; name layers of the base model only")
        given = kwargs.get("exclude_modules") or []
        kwargs["exclude_modules"] = [*([given] if isinstance(given, str) else given), *head]

    def head_parameter_names(self, model):
        if not (self.spec.prompt or self.spec.wrapper) or is_causal_lm(model):
            return head_parameter_names(model)
        inner = model.get_base_model()
        heads = {n.split(".", 1)[0] for n in head_parameter_names(inner)}
        prefix = next(n for n, m in model.named_modules() if m is inner)
        # peft wraps the head: a frozen original and the trained copy it uses (requires_grad)
        return {
            n for n, p in model.named_parameters()
            if p.requires_grad and n.startswith(prefix + ".") and n[len(prefix) + 1:].split(".", 1)[0] in heads
        }

    def merge(self, model):
        if not self.mergeable:
            return model
        _untie_adapted(model)
        if self.spec.wrapper:
            return model.merge_and_unload()
        return model._peftbench_peft.merge_and_unload()

    def on_train_start(self, model, total_steps):
        if not self.spec.allocator:
            return None
        tuner = model.base_model  # AdaLoraModel: public update_and_allocate(global_step)
        config = tuner.peft_config["default"]
        if config.tinit >= total_steps - config.tfinal:
            raise UnsupportedModel(
                f"{self.name}: tinit={config.tinit} and tfinal={config.tfinal} leave no rank-allocation phase in "
                f"{total_steps} steps; lower them or train longer"
            )
        config.total_step = total_steps  # the real schedule (the config needed a placeholder)
        return tuner.update_and_allocate

    def extra_sequence_length(self, model):
        return getattr(model, "peft_config", {}).get("default").num_virtual_tokens if self.spec.prompt else 0


@peftbench.hookimpl
def peftbench_register_methods(register):
    if not available():
        return
    for kind, spec in SPECS.items():
        register(PeftMethod(kind, spec))
