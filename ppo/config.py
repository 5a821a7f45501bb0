"""The PPO stage's settings (``configs/ppo.yaml``), parsed by ``trl.TrlParser`` with the run and the start model
(``pipeline.lib.stage.RunArguments``, ``ModelArguments``: the SFT policy, LoRA).

Where a setting means the same as in TRL 1.12's ``PPOConfig``, it has TRL's name and default, so a TRL user's PPO
YAML carries over: ``kl_coef``, ``cliprange``, ``cliprange_value``, ``vf_coef``, ``gamma``, ``lam``,
``num_ppo_epochs``, ``num_mini_batches``, ``response_length``, ``temperature``, ``missing_eos_penalty``,
``total_episodes``, ``local_rollout_forward_batch_size``, ``kl_estimator``, ``whiten_rewards``, and the optimiser's
``learning_rate`` / ``lr_scheduler_type`` / ``warmup_ratio`` / ``weight_decay`` / ``adam_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.lib.stage import gpu_has_bf16

AGGREGATIONS = ("mean", "min", "mean_minus_std")
BACKENDS = ("hf", "vllm")


@dataclass
class PPOStageConfig:
    # --- run and inputs ------------------------------------------------------------------------------------------
    output_dir: str | None = field(default=None, metadata={"help": "Checkpoints; default <run>/ppo/checkpoints."})
    sft_model_path: str | None = field(
        default=None, metadata={"help": "TRL's name of the start model: here model_name_or_path, as in every stage."}
    )
    reward_model_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "One or more reward models (a model folder, or an RM folder with an ensemble.json); default: the "
            "run's RM output, every member of it for an ensemble."
        },
    )
    reward_stats: list[str] | None = field(
        default=None, metadata={"help": "reward_stats.json per reward model; default: beside each model."}
    )
    reward_aggregation: str = field(default="mean", metadata={"help": "Several RMs: mean, min or mean_minus_std."})
    reward_std_coef: float = field(default=1.0, metadata={"help": "k in mean_minus_std: mean - k * std."})
    value_model_path: str | None = field(
        default=None,
        metadata={"help": "Critic init; default: the first RM when it shares the policy's tokenizer, else the SFT."},
    )
    prompts: str | None = field(default=None, metadata={"help": "A file with a 'prompt' column (text or messages)."})
    num_prompts: int | None = None
    eval_prompts: int = field(default=16, metadata={"help": "Prompts held out from training for sample tables."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longer prompts are dropped (and counted)."})
    rubric: str | None = field(default=None, metadata={"help": "module:function gold score logged per step."})

    # --- rollouts ------------------------------------------------------------------------------------------------
    total_episodes: int | None = field(default=None, metadata={"help": "Rollouts to train on."})
    per_device_train_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    num_mini_batches: int = 1
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Per process: prompts generated and scored at once."}
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Per process: rollouts generated at once; default all of the step's (fewer decoding steps)."
        },
    )
    response_length: int = 53
    temperature: float = 0.7
    stop_token: str | None = field(default=None, metadata={"help": "'eos': responses end at the EOS token."})
    generation_backend: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm (GPU)."})
    vllm_gpu_memory_utilization: float = 0.3
    seed: int = 42

    # --- rewards and KL ------------------------------------------------------------------------------------------
    normalize_rewards: bool = field(default=True, metadata={"help": "Scale scores by the RM's training mean/std."})
    missing_eos_penalty: float | None = None
    length_penalty: float = field(default=0.0, metadata={"help": "Subtracted from the score per response token."})
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt the KL coefficient toward target_kl."})
    target_kl: float = 6.0
    kl_horizon: float = 10000.0
    whiten_rewards: bool = False

    # --- PPO -----------------------------------------------------------------------------------------------------
    num_ppo_epochs: int = 4
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    learning_rate: float = 3e-6
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (None: off)."})
    bf16: bool | None = field(default=None, metadata={"help": "Default: on when a GPU with bf16 support is present."})
    gradient_checkpointing: bool = False

    # --- LoRA (use_lora and the rest are pipeline.lib.stage.ModelArguments) ------------------------------------
    value_lora: bool = field(default=True, metadata={"help": "With use_lora: adapters in the value model too."})

    # --- checkpoints, logging ------------------------------------------------------------------------------------
    checkpoint_steps: int = field(default=10, metadata={"help": "Save a resumable checkpoint every N steps (0: off)."})
    checkpoints_to_keep: int = 2
    snapshots: int = field(
        default=0,
        metadata={
            "help": "Policy snapshots saved at evenly spaced steps before the last, for the evaluation's score "
            "against KL over training (0: none)."
        },
    )
    save_on_each_node: bool = field(default=False, metadata={"help": "Several machines without a shared disk."})
    logging_steps: int = 1
    num_sample_generations: int = field(default=10, metadata={"help": "Sample tables of eval prompts over the run."})
    per_device_eval_batch_size: int = 8
    report_to: str | None = field(default="wandb", metadata={"help": "wandb (offline without a key), trackio, none."})
    run_name: str | None = None

    def check_reward_models(self, paths: list) -> None:
        """The settings that depend on how many reward models there are, once ensembles are expanded into their
        members (``pipeline.lib.runs.reward_models``)."""
        if self.reward_aggregation == "mean_minus_std" and len(paths) < 2:
            raise ValueError(
                f"reward_aggregation: mean_minus_std needs at least 2 reward models (the std of one is undefined), "
                f'got {len(paths)} ({", ".join(map(str, paths))}). Train an ensemble (`make rm ARGS="--ensemble 3"`), '
                "list several under reward_model_path, or use reward_aggregation: mean."
            )
        if self.reward_stats and len(self.reward_stats) != len(paths):
            raise ValueError(
                f"reward_stats lists {len(self.reward_stats)} files for {len(paths)} reward models: give one per "
                "model, in the same order, or leave it unset to read reward_stats.json beside each."
            )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = gpu_has_bf16()
        if isinstance(self.reward_model_path, str):  # one path in YAML
            self.reward_model_path = [self.reward_model_path]
        if isinstance(self.reward_stats, str):
            self.reward_stats = [self.reward_stats]
        self._check_inputs()
        self._check_counts()
        self._check_coefficients()
        self._check_batch_split()
        self._check_choices()

    def _check_inputs(self) -> None:
        if self.sft_model_path is not None:
            raise ValueError(
                "sft_model_path: the start model is model_name_or_path here, the one name every stage uses "
                f"(model_name_or_path: {self.sft_model_path})."
            )
        if not self.prompts:
            raise ValueError("Set prompts: a file with a 'prompt' column (text or chat messages) to train on.")
        if self.total_episodes is None:
            raise ValueError("Set total_episodes (rollouts to train on), e.g. total_episodes: 1024.")

    def _check_counts(self) -> None:
        positive = (
            "total_episodes",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_mini_batches",
            "local_rollout_forward_batch_size",
            "response_length",
            "num_ppo_epochs",
            "per_device_eval_batch_size",
            "logging_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.snapshots < 0:
            raise ValueError(
                f"snapshots must be 0 (none) or a number of policy snapshots to save over the run, got "
                f"{self.snapshots}."
            )
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError(f"generation_batch_size must be at least 1, got {self.generation_batch_size}.")

    def _check_coefficients(self) -> None:
        for name in ("temperature", "learning_rate", "kl_horizon"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("cliprange", "cliprange_value", "vf_coef", "kl_coef", "weight_decay", "length_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("gamma", "lam", "warmup_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")

    def _check_batch_split(self) -> None:
        local_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if (
            local_batch % self.num_mini_batches
            or (local_batch // self.num_mini_batches) % self.per_device_train_batch_size
        ):
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps ({local_batch}) must split into "
                f"num_mini_batches ({self.num_mini_batches}) mini-batches of whole micro-batches of "
                f"{self.per_device_train_batch_size}: make gradient_accumulation_steps a multiple of num_mini_batches."
            )

    def _check_choices(self) -> None:
        if self.stop_token not in (None, "eos"):
            raise ValueError(f"stop_token must be 'eos' or unset, got {self.stop_token!r}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.reward_aggregation not in AGGREGATIONS:
            raise ValueError(
                f"reward_aggregation: unknown {self.reward_aggregation!r}; choose one of {', '.join(AGGREGATIONS)}."
            )
        if self.generation_backend not in BACKENDS:
            raise ValueError(
                f"generation_backend must be one of {', '.join(BACKENDS)}, got {self.generation_backend!r}."
            )
        if self.adaptive_kl and self.target_kl <= 0:
            raise ValueError(f"target_kl must be positive with adaptive_kl, got {self.target_kl}.")
        if self.lr_scheduler_type not in ("linear", "constant", "cosine"):
            raise ValueError(f"lr_scheduler_type must be linear, constant or cosine, got {self.lr_scheduler_type!r}.")

    @property
    def local_batch_size(self) -> int:
        """Rollouts per process per step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def micro_batches_per_mini_batch(self) -> int:
        return self.local_batch_size // self.num_mini_batches // self.per_device_train_batch_size
