"""Model cards and Hub uploads for post-trained models."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

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
    license: str = "apache-2.0",
    results: list[dict] | None = None,
    results_name: str | None = None,
    table: str | None = None,
    plot: str | None = None,
    dataset_name: str = "held-out text",
    adapter: bool = False,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` with front matter (tags, base_model, model-index) and the standard body.

    Args:
        results (`list[dict]`, *optional*): this model's `{"start", "end", "perplexity"}` buckets, put into the
            `model-index` as one perplexity value per position bucket.
        adapter (`bool`, *optional*, defaults to `False`): the folder holds a PEFT adapter, not full weights: the
            card keeps peft's fields (`library_name: peft`, `base_model`) and its quick start loads with peft.
    """
    if state_init not in METHODS:
        raise ValueError(f"Unknown state_init {state_init!r}.")
    architecture = get_architecture(model_type).display_name
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
        base_model=base_model if base_model and "/" in base_model and not Path(base_model).exists() else None,
        datasets=datasets,
        tags=["hf_longssm", "state-passing", state_init.replace("_", "-"), model_type, "length-generalization"]
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
    )


# Files a post-trained model folder may hold that belong on the Hub (checkpoints and optimizer states do not).
UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png", "*.txt", "*.model", "*.jinja"]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload model post-trained with hf_longssm",
) -> str:
    """Create `repo_id` if needed and upload weights, tokenizer, card, results JSON and plots from `folder`."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        allow_patterns=UPLOAD_PATTERNS,
        ignore_patterns=["checkpoint-*/**", "runs/**"],
    )
    return getattr(info, "commit_url", str(info))
