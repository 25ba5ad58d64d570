"""lm-evaluation-harness for recurrent models at any length: `LongSSMLM`, registered with lm-eval as `hf_longssm`.

lm-eval's `HFLM` takes `max_length` from the config's position limit, which Mamba configs lack, so it falls back to
2048: longer inputs are left-truncated without a word and `loglikelihood_rolling` restarts every 2048 tokens.
`LongSSMLM` reads every input through the one prefill loop (`forward.iter_segments`) with the state carried, so
nothing is truncated and memory is one segment's activations whatever the length. It follows HFLM's conventions
otherwise (tokenization, prefix token, request handling), so on inputs HFLM does not truncate both give the same
numbers.

Importing this module registers the model (`lm_eval --model hf_longssm` after `import hf_longssm.evaluation.harness`,
or `lm_eval.simple_evaluate(model="hf_longssm", ...)`); with `harness_tasks.py` (the task suite) and
`harness_babilong.py` (lm-eval's own BABILong tasks from a local copy of their dataset), both re-exported here, it is
the only module of hf_longssm that imports lm-eval (`pip install "hf-longssm[lm-eval]"`).

Example:
    >>> import lm_eval
    >>> from hf_longssm.evaluation.harness import LongSSMLM, task_manager
    >>> lm = LongSSMLM("outputs/demo/state_passing", segment_length=4096)
    >>> results = lm_eval.simple_evaluate(
    ...     model=lm, tasks=["longssm_passkey", "niah_single_1"], task_manager=task_manager(lm, [16384]), limit=10
    ... )
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm import tqdm
from transformers import PreTrainedModel

from ..extension import get_extension
from ..forward import eval_mode, forward_with_state, iter_segments, prefill
from ..loading import DTYPES, load_model, resolve_tokenizer
from ..modeling import cache_argument, get_architecture, input_device, unwrap_model
from ..state import CarriedState
from .harness_babilong import (  # noqa: F401 (re-exported: `harness` is the entry point users import)
    BABILONG_REPO,
    babilong_configs,
    babilong_copy,
    babilong_length_tokens,
    babilong_lengths,
    babilong_problems,
    babilong_task_manager,
    babilong_tasks,
    local_babilong,
)
from .harness_tasks import (  # noqa: F401 (re-exported: `harness` is the entry point users import)
    LONGSSM_TASKS,
    OFFLINE_TASKS,
    RULER_DOWNLOAD_TASKS,
    RULER_OFFLINE_TASKS,
    ruler_problems,
    task_manager,
)


# HFLM's default when a task gives no `max_gen_toks`.
DEFAULT_MAX_GEN_TOKS = 256


def _batches(keys: Sequence[Any], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by equal `keys` (a row length, ...), at most `batch_size` per group, in first-seen order.

    Rows of a carried batch are never padded (padding would change the state), so only rows of equal length share
    a batch.
    """
    groups: dict[Any, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size]


@register_model("hf_longssm", "hf-longssm")
class LongSSMLM(TemplateLM):
    """A Mamba-family model for lm-eval that reads inputs of any length in segments with its state carried.

    Constructed like lm-eval's `HFLM` (`--model_args pretrained=...,segment_length=...,dtype=...`).

    Args:
        pretrained (`str` or `PreTrainedModel`): a Hub id or folder in transformers or mamba_ssm format (read by
            `hf_longssm.loading.load_model`), or a loaded model (used as is, on its own device or devices: inputs go
            to the device its input embeddings run on, so a model loaded with a `device_map` works).
        tokenizer (`str` or tokenizer, *optional*): `"byte"`, `"hf_longssm/gpt-neox-20b"`, a Hub id or folder, or a
            tokenizer object; defaults to the one saved with `pretrained`.
        segment_length (`int`, *optional*, defaults to 4096): tokens per forward. Memory grows with it, not with the
            input; any value gives the same numbers (float32: to 1e-4).
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"float32"`): `"float32"`, `"bfloat16"`,
            `"float16"` or `"auto"` (the checkpoint's). float32 because these models are small enough to afford it
            and their carried states then lose nothing between segments.
        device (`str`, *optional*, defaults to `"cpu"`): where a model loaded from `pretrained` runs (ignored with
            `device_map`).
        batch_size (`int`, *optional*, defaults to 1): rows per forward. Only rows of equal token length share a
            batch (a carried segment is never padded): equal-length documents, equal-length continuations of one
            context, equal-length prompts with the same generation settings.
        max_gen_toks (`int`, *optional*, defaults to 256): tokens to generate when a task does not say (HFLM's).
        add_bos_token (`bool`, *optional*): as HFLM's; `None` keeps the tokenizer's own behaviour.
        prefix_token_id (`int`, *optional*): the token that precedes a document in `loglikelihood_rolling` and an
            empty context; defaults to BOS, else EOS (HFLM's rule; Mamba's GPT-NeoX tokenizer has BOS = EOS).
        max_batch_size (`int`, *optional*): accepted for lm-eval's command line, unused (no automatic batch size).
        device_map (`str` or `dict`, *optional*): load `pretrained` with this `device_map` (layers spread over
            devices, CPU or disk offload; as `from_pretrained`) instead of moving it to `device`.
        offload_folder (`str`, *optional*): where layers mapped to `"disk"` are offloaded (with `device_map`).
        attention_state, attention_window: a hybrid's attention policy while scoring (`CarriedState`; default: the
            last `segment_length` keys). Generation prefills a hybrid's prompt with every key (`"full"`), which
            transformers' `generate` needs.
    """

    def __init__(
        self,
        pretrained: str | PreTrainedModel,
        tokenizer: Any = None,
        segment_length: int = 4096,
        dtype: str | torch.dtype = "float32",
        device: str = "cpu",
        batch_size: int | str = 1,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        max_batch_size: int | None = None,
        device_map: str | dict[str, Any] | None = None,
        offload_folder: str | os.PathLike | None = None,
        attention_state: str = "window",
        attention_window: int | None = None,
    ) -> None:
        super().__init__()
        # 1. options
        if str(batch_size).startswith("auto"):
            raise ValueError(
                "batch_size='auto' is not supported by hf_longssm: a carried batch holds rows of equal length only, "
                "so its size is not a memory question. Give an integer (1 is the usual choice on long inputs)."
            )
        self.segment_length = int(segment_length)
        # lm-eval's --model_args gives strings
        window = int(attention_window) if attention_window not in (None, "", "None") else None
        self._attention = {"attention_state": attention_state, "attention_window": window}
        self.batch_size_per_gpu = int(batch_size)
        if self.segment_length < 1 or self.batch_size_per_gpu < 1:
            raise ValueError(f"segment_length and batch_size must be >= 1, got {segment_length} and {batch_size}.")
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)}.")
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id

        # 2. model, through the project's loader (Hub id or folder, transformers or mamba_ssm format)
        if isinstance(pretrained, (str, os.PathLike)):
            torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype == "auto" else getattr(torch, dtype)
            if device_map is None:
                self._model = load_model(str(pretrained), dtype=torch_dtype).to(device)
            else:  # accelerate places (and may offload) the layers; a dispatched model must not be moved
                offload = {} if offload_folder is None else {"offload_folder": str(offload_folder)}
                self._model = load_model(str(pretrained), dtype=torch_dtype, device_map=device_map, **offload)
            self.pretrained = str(pretrained)
        else:
            self._model = pretrained
            self.pretrained = getattr(unwrap_model(pretrained), "name_or_path", "") or type(pretrained).__name__
        self._model.eval()
        # Not the first parameter's device: with a `device_map` it may be "meta" (offloaded) or another layer's.
        self._device = input_device(self._model)

        # 3. tokenizer: the one saved with the model unless given
        model_id = self.pretrained if isinstance(pretrained, (str, os.PathLike)) else None
        if tokenizer is None and model_id is None:
            raise ValueError("A loaded model needs its tokenizer: pass tokenizer= (an object, 'byte', id or path).")
        self.tokenizer = resolve_tokenizer(tokenizer, model_id)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token; lm-eval needs one (end of generation, rolling prefix).")

    # ----- lm-eval's model interface ----------------------------------------------------------------------------
    @property
    def model(self) -> PreTrainedModel:
        return self._model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> None:
        """No limit: inputs are read in segments with the state carried (lm-eval records this value)."""
        return None

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in its results (`config`)."""
        return {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(next(self._model.parameters()).dtype),
            "segment_length": self.segment_length,
            "adapter": "hf_longssm.evaluation.harness.LongSSMLM",
        }

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs
    ) -> list[int]:
        """HFLM's encoding (special tokens as the tokenizer adds them, none before a string that starts with BOS);
        `left_truncate_len` is accepted and refused: nothing is ever truncated here."""
        if left_truncate_len:
            raise ValueError("LongSSMLM never truncates inputs; do not pass left_truncate_len.")
        special_tokens_kwargs = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special_tokens_kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special_tokens_kwargs)

    def tok_decode(self, tokens: int | list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ----- scoring ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(
        self,
        input_ids: torch.LongTensor,
        targets: torch.LongTensor,
        state: CarriedState | None,
        with_greedy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log p(targets) and whether every target is the greedy token (when `with_greedy`), per row, reading
        `input_ids` from `state` in segments (`targets[:, t]` is the token after `input_ids[:, t]`)."""
        logprob = torch.zeros(input_ids.shape[0], dtype=torch.float64)
        greedy = torch.ones(input_ids.shape[0], dtype=torch.bool)
        segments = iter_segments(self._model, input_ids, self.segment_length, state, **self._attention)
        for start, end, output, _ in segments:
            # float32 log-softmax whatever the model's dtype (HFLM's default for float32 models).
            logits = F.log_softmax(output.logits.float(), dim=-1)
            target = targets[:, start:end].to(logits.device)
            logprob += logits.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).double().cpu()
            if with_greedy:
                greedy &= (logits.argmax(-1) == target).all(-1).cpu()
        return logprob, greedy

    def _tensor(self, rows: list[list[int]]) -> torch.LongTensor:
        return torch.tensor(rows, dtype=torch.long, device=self._device)

    def _prefill(self, context: list[int]) -> CarriedState | None:
        """The state after `context` (one row), read in segments; `None` (zeros) for no tokens."""
        if not context:
            return None
        return prefill(self._model, self._tensor([context]), self.segment_length, **self._attention)[1]

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Score each continuation after its context, reading every distinct context once.

        HFLM feeds `(context + continuation)[:-1]` in one pass (truncated to 2048 tokens for Mamba); here the context
        but its last token is prefilled in segments, and every continuation of that context is scored from the same
        state (`[context[-1]] + continuation[:-1]` predicting `continuation`): a multiple-choice question with
        k choices reads its long context once, not k times.
        """
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (_, context_enc, _) in enumerate(requests):
            if not context_enc:
                raise ValueError("Every loglikelihood request needs at least one context token (lm-eval adds one).")
            by_context[tuple(context_enc)].append(index)
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        with eval_mode(self._model):
            for context, members in by_context.items():
                state = self._prefill(list(context[:-1]))
                lengths = [len(requests[i][2]) for i in members]
                for batch in _batches(lengths, override_bs or self.batch_size):
                    continuations = [requests[members[i]][2] for i in batch]
                    if not continuations[0]:
                        scores = [(0.0, True)] * len(batch)
                    else:
                        inputs = self._tensor([[context[-1]] + c[:-1] for c in continuations])
                        rows = None if state is None else state.permute([0] * len(batch))
                        logprob, greedy = self._score(inputs, self._tensor(continuations), rows)
                        scores = [(float(lp), bool(g)) for lp, g in zip(logprob, greedy)]
                    for i, answer in zip(batch, scores):
                        index = members[i]
                        results[index] = answer
                        if requests[index][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                    pbar.update(len(batch))
        pbar.close()
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents in one carried-state pass each: `[prefix] + tokens[:-1]` predicting
        `tokens`, every token conditioned on everything before it (HFLM restarts at every 2048-token window)."""
        documents = [self.tok_encode(string) for (string,) in (req.args for req in requests)]
        results = [0.0] * len(requests)  # an empty document has log-likelihood 0, as in HFLM
        todo = [i for i, tokens in enumerate(documents) if tokens]
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood_rolling requests")
        pbar.update(len(requests) - len(todo))
        with eval_mode(self._model):
            for batch in _batches([len(documents[i]) for i in todo], self.batch_size):
                tokens = [documents[todo[i]] for i in batch]
                inputs = self._tensor([[self.prefix_token_id] + t[:-1] for t in tokens])
                logprob, _ = self._score(inputs, self._tensor(tokens), None, with_greedy=False)
                for i, value in zip(batch, logprob.tolist()):
                    results[todo[i]] = value
                    self.cache_hook.add_partial("loglikelihood_rolling", requests[todo[i]].args, value)
                pbar.update(len(batch))
        pbar.close()
        return results

    def _greedy_with_state(
        self, last: torch.Tensor, state: CarriedState, max_gen_toks: int, until: list[str], kwargs: dict
    ) -> torch.Tensor:
        """Greedy decoding one token at a time through hf_longssm's forward, for a model with a training-free length
        extension (`hf_longssm.extend`), which only that forward applies. Stops when every row has produced a stop
        sequence or EOS."""
        kwargs = {k: v for k, v in kwargs.items() if k not in ("do_sample", "temperature") or v}
        unsupported = sorted(set(kwargs) - {"suppress_tokens"})
        if unsupported:
            raise ValueError(
                "A model with a training-free length extension generates greedily through hf_longssm's own decoding "
                f"loop, which takes `suppress_tokens` only; this task asks for {unsupported}."
            )
        suppressed = list(kwargs.get("suppress_tokens") or [])
        tokens, finished = [], [False] * last.shape[0]
        for _ in range(max(0, max_gen_toks)):
            output, state = forward_with_state(self._model, last, state)
            logits = output.logits[:, -1:].float()
            if suppressed:
                logits[..., suppressed] = float("-inf")
            last = logits.argmax(-1)
            # A finished row gets EOS (dropped when decoded), as generate() pads it: nothing after its end shows.
            last[torch.tensor(finished, device=last.device)] = self.eot_token_id
            tokens.append(last)
            for i, row in enumerate(torch.cat(tokens, 1).tolist()):
                if not finished[i]:
                    ended = row[-1] == self.eot_token_id
                    finished[i] = ended or any(stop in self.tok_decode(row) for stop in until)
            if all(finished):
                break
        return torch.cat(tokens, 1) if tokens else last[:, :0]

    # ----- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) generation after a prompt of any length: the prompt but its last token is prefilled in
        segments, then transformers' `generate()` continues from `state.to_cache()` with the task's stop sequences
        and `max_gen_toks`; the text is cut at the first stop sequence, as HFLM does."""
        contexts = [self.tok_encode(req.args[0]) or [self.prefix_token_id] for req in requests]
        settings = [json.dumps(req.args[1], sort_keys=True, default=str) for req in requests]
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        with eval_mode(self._model):
            for batch in _batches(list(zip(map(len, contexts), settings)), self.batch_size):
                kwargs = normalize_gen_kwargs(requests[batch[0]].args[1], self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_gen_toks = kwargs.pop("max_gen_toks")
                if "max_length" in kwargs:  # HFLM's meaning: prompt + generation
                    max_gen_toks = kwargs.pop("max_length") - len(contexts[batch[0]])
                if not kwargs.get("do_sample") and kwargs.get("temperature", 0.0) == 0.0:
                    kwargs.pop("temperature", None)  # greedy: no temperature warning from transformers
                ids = self._tensor([contexts[i] for i in batch])
                # A hybrid's cache holds every key of the prompt, and `generate` then takes the whole prompt;
                # a Mamba's holds states only, and takes the last token.
                full = {"attention_state": "full"}
                if ids.shape[1] > 1:
                    _, state = prefill(self._model, ids[:, :-1], self.segment_length, **full)
                else:
                    state = CarriedState.zeros(self._model, len(batch), **full)
                prompt = ids if state.keys else ids[:, -1:]
                # transformers' generate() would not apply an extension, nor take xLSTM's cache
                if get_extension(self._model) is not None or not get_architecture(self._model).generate_from_cache:
                    new_tokens = self._greedy_with_state(ids[:, -1:], state, max_gen_toks, until, kwargs)
                    for i, tokens in zip(batch, new_tokens.tolist()):
                        text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
                        results[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    pbar.update(len(batch))
                    continue
                output = self._model.generate(
                    prompt,
                    **{cache_argument(self._model): state.to_cache(unwrap_model(self._model).config)},
                    max_new_tokens=max_gen_toks,
                    stopping_criteria=stop_sequences_criteria(self.tokenizer, until, 1, len(batch)),
                    pad_token_id=self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else self.eot_token_id,
                    use_cache=True,
                    **kwargs,
                )
                for i, tokens in zip(batch, output[:, prompt.shape[1] :].tolist()):
                    text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                pbar.update(len(batch))
        pbar.close()
        return results
