"""The five initial states a training segment can start from (`StatePassingConfig.state_init`).

Each intervention answers two questions per step: what state does this batch start from (`initial_state`), and what
does it keep of the batch's final state (`observe`). What it keeps is saved with every checkpoint (`state_dict`), so
a resumed run starts the next segment exactly as the uninterrupted run would.

* `zero`: every segment from zero (plain training, the control);
* `random_noise`: IID Gaussian SSM states, one `noise_std` for all layers and heads;
* `fitted_noise`: Gaussian SSM states with the per-layer, per-head mean and std of final states seen in training;
* `state_passing`: the previous batch's final state (a different sequence);
* `tbtt`: the previous segment's final state of the same stream (reset where a stream or document starts).

A hybrid's attention layers (keys and values) have no noise analogue: the noise inits and `zero` start them empty;
state passing carries the previous batch's keys with its SSM states (another sequence's context, as its SSM state
is), TBTT the stream's own; how many are kept is `attention_state` / `attention_window` (docs: the policy table).
"""

from __future__ import annotations

import torch

from ..state import CarriedState, FittedNoiseStats


class Intervention:
    """Base class: zeros for every segment, nothing kept.

    Args:
        args (`StatePassingConfig`): the run's configuration.
        num_layers (`int`): the model's layers (for the fitted statistics).
        seed (`int`): seed of the noise generator, distinct per process.
    """

    def __init__(self, args, num_layers: int, seed: int):
        self.args = args
        self.state_dtype = getattr(torch, args.state_dtype)
        self.carried: CarriedState | None = None
        self.fitted_stats = FittedNoiseStats(num_layers)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def attention(self) -> dict:
        """A hybrid's attention policy (`attention_state`, `attention_window`) for every state built here."""
        window = self.args.attention_window or self.args.segment_length
        return {"attention_state": self.args.attention_state, "attention_window": window}

    def zeros(self, model, batch_size: int, device) -> CarriedState:
        return CarriedState.zeros(model, batch_size, device=device, state_dtype=self.state_dtype, **self.attention)

    def initial_state(self, model, inputs: dict[str, torch.Tensor], global_step: int) -> CarriedState:
        input_ids = inputs["input_ids"]
        return self.zeros(model, input_ids.shape[0], input_ids.device)

    def observe(self, final_state: CarriedState, global_step: int) -> None:
        """Keep what the next segments need of this batch's (detached) final state."""

    # ----- checkpoints: the keys are the checkpoint file's, shared by every intervention ------------------------
    def state_dict(self) -> dict:
        return {
            "carried": None if self.carried is None else self.carried.state_dict(),
            "batch_size": None if self.carried is None else self.carried.batch_size,
            "fitted_stats": self.fitted_stats.state_dict(),
            "noise_generator": self.generator.get_state(),
        }

    def load_state_dict(self, payload: dict, config, device) -> None:
        if payload["carried"] is not None:
            carried = CarriedState.from_state_dict(payload["carried"], config, **self.attention)
            self.carried = carried.to(device=device)
        self.fitted_stats = FittedNoiseStats.from_state_dict(payload["fitted_stats"])
        self.generator.set_state(payload["noise_generator"])


class Zero(Intervention):
    pass


class RandomNoise(Intervention):
    def initial_state(self, model, inputs, global_step):
        input_ids = inputs["input_ids"]
        return CarriedState.random_noise(
            model,
            input_ids.shape[0],
            self.args.noise_std,
            generator=self.generator,
            device=input_ids.device,
            state_dtype=self.state_dtype,
            **self.attention,
        )


class FittedNoise(Intervention):
    """Trains from zero for `fitted_noise_warmup_steps` while the statistics are gathered, then samples from them;
    with `fitted_noise_update="running"` every later final state keeps updating them."""

    def initial_state(self, model, inputs, global_step):
        if global_step < self.args.fitted_noise_warmup_steps or self.fitted_stats.is_empty:
            return super().initial_state(model, inputs, global_step)
        input_ids = inputs["input_ids"]
        return CarriedState.fitted_noise(
            model,
            input_ids.shape[0],
            self.fitted_stats,
            generator=self.generator,
            device=input_ids.device,
            state_dtype=self.state_dtype,
            **self.attention,
        )

    def observe(self, final_state, global_step):
        if self.args.fitted_noise_update == "running" or global_step < self.args.fitted_noise_warmup_steps:
            self.fitted_stats.update(final_state)


class StatePassing(Intervention):
    def initial_state(self, model, inputs, global_step):
        input_ids = inputs["input_ids"]
        previous = self.carried
        if previous is None or previous.batch_size != input_ids.shape[0]:
            return super().initial_state(model, inputs, global_step)  # first step, or a short last batch
        return previous.to(device=input_ids.device)

    def observe(self, final_state, global_step):
        self.carried = final_state


class TBTT(StatePassing):
    """Continue each row's own stream: reset at a stream's first segment and (`reset_state_on_eos`) where a
    document starts at the segment's first token."""

    def initial_state(self, model, inputs, global_step):
        input_ids = inputs["input_ids"]
        previous = self.carried
        if previous is None:
            return self.zeros(model, input_ids.shape[0], input_ids.device)
        if previous.batch_size != input_ids.shape[0]:
            raise ValueError(
                f"TBTT carries one state per stream, but the batch changed from {previous.batch_size} to "
                f"{input_ids.shape[0]} rows. Keep per_device_train_batch_size fixed and dataloader_drop_last=True."
            )
        if "segment_index" not in inputs or "reset_mask" not in inputs:
            raise ValueError(
                "TBTT needs `segment_index` and `reset_mask` in every batch to know where streams and documents "
                "start: use DataCollatorForStatePassing (or a collator that passes both through)."
            )
        reset = inputs["segment_index"] == 0
        if self.args.reset_state_on_eos:
            reset = reset | inputs["reset_mask"]
        return previous.to(device=input_ids.device).reset(reset)


INTERVENTIONS: dict[str, type[Intervention]] = {
    "zero": Zero,
    "random_noise": RandomNoise,
    "fitted_noise": FittedNoise,
    "state_passing": StatePassing,
    "tbtt": TBTT,
}
