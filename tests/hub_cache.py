"""A Hub cache with tiny checkpoints in the real repositories' file layouts, served offline (no network).

`hub_cache` points `HF_HOME` at it and sets `HF_HUB_OFFLINE=1` (environment and huggingface_hub's constants, which
are read at import), so `load_model("state-spaces/mamba2-130m")` and `AutoTokenizer.from_pretrained(...)` resolve
Hub ids exactly as on a user's machine with a filled cache. A test module makes both fixtures visible with

    from tests import hub_cache as fixtures
    hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files

The mamba_ssm-format checkpoints are written from a transformers model (names and config mapped back by hand,
from state-spaces/mamba's `config_mamba.py`, `mixer_seq_simple.py`, `mamba_simple.py`, `mamba2.py`), so loading
them must give that model back (`HubCache.sources`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedModel,
)

from hf_longssm.tokenization import byte_tokenizer


MAMBA2_ID = "state-spaces/mamba2-130m"
MAMBA1_ID = "state-spaces/mamba-130m"
MAMBA1_HF_ID = "state-spaces/mamba-130m-hf"
FALCON_ID = "tiiuae/falcon-mamba-tiny-dev"
# The scale-out recipes' models (recipes/*/sp/config_fsdp2.yaml): the same tiny stand-ins under their ids.
MAMBA2_2_7B_ID = "state-spaces/mamba2-2.7b"
FALCON_7B_ID = "tiiuae/falcon-mamba-7b"
NEOX_ID = "EleutherAI/gpt-neox-20b"
# The Gated DeltaNet recipe's model (recipes/qwen3.5-0.8b): a tiny vision-language checkpoint, as the real one is,
# whose language model AutoModelForCausalLM loads.
QWEN3_5_ID = "Qwen/Qwen3.5-0.8B"
# Tokens the fixture's tokenizer has (the byte tokenizer stands in for GPT-NeoX-20B's 50,277).
VOCAB = 257
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
# mamba_ssm's module defaults, written here independently of hf_longssm.mamba_ssm_format.
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)


@dataclass
class HubCache:
    """`root` is the HF_HOME; `sources[repo_id]` is the transformers model a repository was written from."""

    root: Path
    sources: dict[str, PreTrainedModel] = field(default_factory=dict)

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    def snapshot(self, repo_id: str) -> Path:
        repo = self.hub / f"models--{repo_id.replace('/', '--')}"
        return repo / "snapshots" / (repo / "refs" / "main").read_text()


def write_repo(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repository in huggingface_hub's cache layout: `blobs/<sha256>`, `snapshots/<commit>/<file>` links to the
    blobs, `refs/main` naming the commit. Returns the snapshot folder."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def randomized(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Random A, D, dt and norm weights (not the defaults), so that a mixed-up name or layout changes the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", ".D", "dt_bias", "norm.weight", "norm_f.weight", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model.float().eval()


def saved_folder_files(obj, tmp: Path) -> dict[str, bytes]:
    """The files `obj.save_pretrained` writes (a model or a tokenizer), by name."""
    obj.save_pretrained(tmp)
    return {p.name: p.read_bytes() for p in sorted(tmp.iterdir()) if p.is_file()}


def mamba_ssm_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """`MambaLMHeadModel.state_dict()` of the same weights: `backbone.embedding.weight`, and `lm_head.weight`
    present and sharing the embedding's storage when tied (as torch saves tied parameters)."""
    state = {}
    for name, tensor in model.state_dict().items():
        state["backbone.embedding.weight" if name == "backbone.embeddings.weight" else name] = tensor.clone()
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    return state


def mamba_ssm_files(model: PreTrainedModel, config: dict) -> dict[str, bytes]:
    """`config.json` + `pytorch_model.bin` as `MambaLMHeadModel.save_pretrained` writes them."""
    buffer = io.BytesIO()
    torch.save(mamba_ssm_state_dict(model), buffer)
    return {"config.json": json.dumps(config, indent=4).encode(), "pytorch_model.bin": buffer.getvalue()}


def tiny_mamba2_with_mamba_ssm_defaults(seed: int = 1) -> Mamba2ForCausalLM:
    """What `MambaLMHeadModel` builds for `d_model=64, n_layer=2, ssm_cfg={"layer": "Mamba2"}`: d_state 128,
    d_conv 4, expand 2, headdim 64 (2 heads), ngroups 1, chunk_size 256, gated RMSNorm, vocab 257 padded to 272."""
    torch.manual_seed(seed)
    config = Mamba2Config(
        hidden_size=64,
        num_hidden_layers=2,
        vocab_size=272,
        state_size=128,
        conv_kernel=4,
        expand=2,
        num_heads=2,
        head_dim=64,
        n_groups=1,
        chunk_size=256,
        layer_norm_epsilon=1e-5,
        residual_in_fp32=True,
        tie_word_embeddings=True,
        **SPECIAL_IDS,
    )
    return randomized(Mamba2ForCausalLM(config), seed)


def tiny_mamba1_with_mamba_ssm_defaults(seed: int = 2) -> MambaForCausalLM:
    """What `MambaLMHeadModel` builds for `d_model=16, n_layer=2, ssm_cfg={}`: d_state 16, d_conv 4, expand 2,
    dt_rank ceil(16/16) = 1, conv bias, no in/out bias, vocab 257 padded to 264 (multiple 8), tied head."""
    torch.manual_seed(seed)
    config = MambaConfig(
        hidden_size=16,
        num_hidden_layers=2,
        vocab_size=264,
        state_size=16,
        conv_kernel=4,
        expand=2,
        time_step_rank=1,
        use_conv_bias=True,
        use_bias=False,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        **SPECIAL_IDS,
    )
    return randomized(MambaForCausalLM(config), seed)


def build_hub_cache(root: Path) -> HubCache:
    """Fill `root/hub` with the repositories the recipes and tests name."""
    cache = HubCache(root)
    tokenizer_files = saved_folder_files(byte_tokenizer(), root / "tmp" / "tokenizer")

    # The papers' Mamba-2: mamba_ssm format, exactly the keys of state-spaces/mamba2-130m's config.json.
    mamba2 = cache.sources[MAMBA2_ID] = tiny_mamba2_with_mamba_ssm_defaults()
    mamba2_config = {
        "d_model": 64,
        "d_intermediate": 0,
        "n_layer": 2,
        "vocab_size": VOCAB,
        "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    files = {".gitattributes": GITATTRIBUTES, "README.md": b"---\nlicense: apache-2.0\n---\n"}
    write_repo(cache.hub, MAMBA2_ID, files | mamba_ssm_files(mamba2, mamba2_config))
    cache.sources[MAMBA2_2_7B_ID] = mamba2
    write_repo(cache.hub, MAMBA2_2_7B_ID, files | mamba_ssm_files(mamba2, mamba2_config))

    # The papers' Mamba-1: an older mamba_ssm config.json (no d_intermediate, no tie_embeddings: defaults apply).
    mamba1 = cache.sources[MAMBA1_ID] = tiny_mamba1_with_mamba_ssm_defaults()
    mamba1_config = {
        "d_model": 16,
        "n_layer": 2,
        "vocab_size": VOCAB,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    write_repo(cache.hub, MAMBA1_ID, {".gitattributes": GITATTRIBUTES} | mamba_ssm_files(mamba1, mamba1_config))

    # The transformers copy of Mamba-1 (`-hf`): save_pretrained files plus the tokenizer; its config.json also
    # carries mamba_ssm's keys (n_layer, rms_norm, fused_add_norm, pad_vocab_size_multiple), as the real one does.
    mamba1_hf = cache.sources[MAMBA1_HF_ID] = randomized(MambaForCausalLM(mamba1.config), seed=3)
    files = saved_folder_files(mamba1_hf, root / "tmp" / "mamba1_hf")
    config = json.loads(files["config.json"]) | {
        "n_layer": 2,
        "rms_norm": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    files["config.json"] = json.dumps(config, indent=2).encode()
    write_repo(cache.hub, MAMBA1_HF_ID, {".gitattributes": GITATTRIBUTES} | files | tokenizer_files)

    # A FalconMamba repository in transformers format.
    torch.manual_seed(4)
    falcon_config = FalconMambaConfig(
        hidden_size=16, num_hidden_layers=2, vocab_size=264, state_size=8, time_step_rank=4, **SPECIAL_IDS
    )
    falcon = cache.sources[FALCON_ID] = randomized(FalconMambaForCausalLM(falcon_config), seed=4)
    files = saved_folder_files(falcon, root / "tmp" / "falcon")
    write_repo(cache.hub, FALCON_ID, {".gitattributes": GITATTRIBUTES} | files | tokenizer_files)
    cache.sources[FALCON_7B_ID] = falcon
    write_repo(cache.hub, FALCON_7B_ID, {".gitattributes": GITATTRIBUTES} | files | tokenizer_files)

    # The tokenizer the Mamba-2 recipes name: its tokenizer files and config.json (AutoTokenizer reads it too), no
    # weights.
    neox_config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": 6144,
        "num_attention_heads": 64,
        "num_hidden_layers": 44,
        "vocab_size": 50432,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    files = {".gitattributes": GITATTRIBUTES, "config.json": json.dumps(neox_config, indent=2).encode()}
    write_repo(cache.hub, NEOX_ID, files | tokenizer_files)

    # Qwen3.5: the vision-language model's files (its tokenizer: the byte one); the source is the language model
    # that AutoModelForCausalLM reads out of them.
    from transformers import AutoModelForCausalLM, Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(5)
    text = dict(
        vocab_size=264, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=8, linear_conv_kernel_dim=4, **SPECIAL_IDS,
    )  # fmt: skip
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=32)
    qwen = randomized(Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision)), 5)
    files = saved_folder_files(qwen, root / "tmp" / "qwen3_5")
    cache.sources[QWEN3_5_ID] = AutoModelForCausalLM.from_pretrained(root / "tmp" / "qwen3_5").float().eval()
    write_repo(cache.hub, QWEN3_5_ID, {".gitattributes": GITATTRIBUTES} | files | tokenizer_files)
    return cache


@pytest.fixture(scope="session")
def hub_cache_files(tmp_path_factory) -> HubCache:
    """The cache's files, written once per test session."""
    return build_hub_cache(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture()
def hub_cache(hub_cache_files, monkeypatch) -> HubCache:
    """Serve `hub_cache_files` as the Hub cache, offline, for one test."""
    root = hub_cache_files.root
    for name, value in {"HF_HOME": root, "HF_HUB_CACHE": root / "hub", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache_files
