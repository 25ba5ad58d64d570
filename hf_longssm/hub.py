"""Model cards and Hub uploads for post-trained models."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .modeling import get_architecture
from .versions import CARD_PACKAGES, package_versions


TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"

METHODS = {
    "zero": ("plain training (zero initial state)", "a zero state"),
    "random_noise": ("Random Noise", "IID Gaussian noise with one standard deviation for all layers and heads"),
    "fitted_noise": ("Fitted Noise", "Gaussian noise with the per-layer, per-head mean and std of final states"),
    "state_passing": ("State Passing", "the final state of the previous batch (a different sequence)"),
    "tbtt": ("TBTT", "the final state of the previous segment of the same stream"),
}


def results_table(buckets: dict[str, list[dict]], metric: str = "perplexity", fmt: str = "{:.3f}") -> str:
    """Markdown table of one metric: one row per position bucket, one column per model.

    Args:
        buckets (`dict[str, list[dict]]`): per model (the column title), its buckets, each with `start`, `end` and
            `metric`; every model has the same buckets.
        metric (`str`, *optional*, defaults to `"perplexity"`): the key read from each bucket, named in the header.
        fmt (`str`, *optional*, defaults to `"{:.3f}"`): how a value is written.

    Example:
        >>> print(results_table({"sp": [{"start": 0, "end": 32, "bits_per_byte": -0.0049}]}, metric="bits_per_byte"))
        | positions (bits_per_byte) | sp |
        |---|---|
        | [0, 32) | -0.005 |
    """
    if not buckets:
        raise ValueError("results_table needs the buckets of at least one model.")
    names = list(buckets)
    rows = [f"| positions ({metric}) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, bucket in enumerate(buckets[names[0]]):
        cells = [fmt.format(buckets[n][i][metric]) for n in names]
        rows.append(f"| [{bucket['start']}, {bucket['end']}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _framework_versions() -> str:
    """The card's "Framework versions": one `- name version` line per installed package of `CARD_PACKAGES`."""
    return "\n".join(f"- {name} {version}" for name, version in package_versions(CARD_PACKAGES).items())


def render_model_card(
    *,
    model_name: str,
    model_type: str,
    state_init: str,
    segment_length: int,
    steps: int,
    tokens_seen: int,
    batch: str,
    learning_rate: float,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    results: list[dict] | None = None,
    results_name: str | None = None,
    table: str | None = None,
    plot: str | None = None,
    dataset_name: str = "held-out text",
    adapter: bool = False,
    attention: str | None = None,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` with front matter (tags, base_model, model-index) and the standard body.

    Args:
        results (`list[dict]`, *optional*): this model's `{"start", "end", "perplexity"}` buckets, put into the
            `model-index` as one perplexity value per position bucket.
        adapter (`bool`, *optional*, defaults to `False`): the folder holds a PEFT adapter, not full weights: the
            card keeps peft's fields (`library_name: peft`, `base_model`) and its quick start loads with peft.
        license (`str`, *optional*): the card's licence; omitted when unknown (`base_model_license` reads the base
            model's), never guessed.
        datasets (`list[str]`, *optional*): Hub dataset ids; anything else (a local path) is left out.
        attention (`str`, *optional*): a hybrid's attention policy while training (e.g. `"window (2048)"`), which a
            user should evaluate it with.
    """
    if state_init not in METHODS:
        raise ValueError(f"Unknown state_init {state_init!r}.")
    architecture = get_architecture(model_type).display_name
    # A family whose model code is another package's (flash-linear-attention): transformers' Auto classes know it
    # once that package is imported
    fla_code = get_architecture(model_type).register_model_code is not None
    eval_results = None
    if results:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type="text",
                dataset_name=dataset_name,
                metric_type="perplexity",
                metric_value=round(r["perplexity"], 4),
                metric_name=f"perplexity@[{r['start']},{r['end']})",
            )
            for r in results
        ]
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        base_model=hub_id(base_model),
        datasets=[d for d in datasets or [] if hub_id(d)] or None,
        # The method's own tag: `state-passing` only for state passing (not TBTT, noise or the zero control).
        tags=["hf_longssm", state_init.replace("_", "-"), model_type, "length-generalization"]
        + (["lora"] if adapter else []),
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or model_name,
        base_model=card_data.base_model,
        architecture=architecture,
        method_title=METHODS[state_init][0],
        method_description=METHODS[state_init][1],
        state_init=state_init,
        segment_length=segment_length,
        steps=steps,
        tokens_seen=f"{tokens_seen:,}",
        batch=batch,
        learning_rate=learning_rate,
        results_table=table,
        plot=plot,
        versions=_framework_versions(),
        adapter=adapter,
        fla_code=fla_code,
        extra_settings=f"| attention_state | `{attention}` |" if attention else None,
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub repository id (`org/name`), else `None`: local paths (`/data/x`, `./x`, an existing
    folder) and the offline corpus never go into a card's metadata."""
    if not name or not _HUB_ID.fullmatch(name) or os.path.exists(name) or name.startswith("hf_longssm/"):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def base_model_license(name_or_path: str | None) -> str | None:
    """The `license` of a base model's card: its folder's `README.md`, or the Hub cache's copy (nothing is
    downloaded); `None` when there is none."""
    if not name_or_path:
        return None
    card = Path(name_or_path) / "README.md"
    if not card.is_file() and hub_id(name_or_path):
        cached = try_to_load_from_cache(name_or_path, "README.md")
        card = Path(cached) if isinstance(cached, str) else card
    if not card.is_file():
        return None
    try:
        return ModelCard.load(card).data.license
    except Exception:  # a card without parsable front matter says nothing about the licence
        return None


def drop_peft_local_card(folder: str | os.PathLike) -> None:
    """Remove a card that names a local base model path: the placeholder card peft's `save_pretrained` writes into
    an adapter folder (every checkpoint too), which transformers' checkpoint pushes would upload. hf_longssm's own
    cards never name a local path (`hub_id`), so they are left alone."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return
    try:
        base_model = ModelCard.load(card).data.base_model
    except Exception:  # no parsable front matter: nothing of peft's
        return
    if isinstance(base_model, str) and not hub_id(base_model):
        card.unlink()


# Files a post-trained model folder may hold that belong on the Hub (checkpoints and optimizer states do not).
UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png", "*.txt", "*.model", "*.jinja"]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload model post-trained with hf_longssm",
    base_model_id: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload weights, tokenizer, card, results JSON and plots from `folder`.

    A LoRA adapter's `adapter_config.json` names its base model; one that names a local folder could not be loaded
    anywhere else, so it is refused unless `base_model_id` (the base's Hub id) is given, which the uploaded copy
    then names (the local file is left as it is, so the folder still loads here).

    Raises:
        `ValueError`: an adapter whose base is a local path and no `base_model_id`.
    """
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    with tempfile.TemporaryDirectory(prefix="hf_longssm_upload_") as staging:
        upload_from = folder
        if adapter_config.is_file():
            config = json.loads(adapter_config.read_text())
            base = config.get("base_model_name_or_path")
            if base_model_id is None and not hub_id(base):
                raise ValueError(
                    f"{adapter_config} names the local base model {base!r}: uploaded as it is, the adapter could not "
                    "be loaded anywhere else. Give the base model's Hub id (base_model_id in the recipe, "
                    "--base_model_id for `hf-longssm push`)."
                )
            if base_model_id is not None and base_model_id != base:
                # Stage the uploadable files with the Hub id written into the adapter's config.
                upload_from = Path(staging)
                for path in folder.iterdir():
                    if path.is_file() and any(path.match(pattern) for pattern in UPLOAD_PATTERNS):
                        shutil.copy2(path, upload_from / path.name)
                (upload_from / adapter_config.name).write_text(
                    json.dumps({**config, "base_model_name_or_path": base_model_id}, indent=2)
                )
                staged_card = upload_from / "README.md"
                if staged_card.is_file():  # the card names the same base
                    card = ModelCard.load(staged_card)
                    if not hub_id(card.data.base_model):
                        card.data.base_model = base_model_id
                        card.save(staged_card)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(upload_from),
            commit_message=commit_message,
            allow_patterns=UPLOAD_PATTERNS,
            ignore_patterns=["checkpoint-*/**", "runs/**"],
        )
    return getattr(info, "commit_url", str(info))
