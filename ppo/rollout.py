"""Generation backends for the rollout phase: transformers' ``generate`` (default, CPU and GPU) and vLLM (GPU).

Both return, per prompt, the sampled response tokens; the HF backend also returns each token's log-probability
under the sampling distribution (read off the logits it already computed), so the loop needs no extra forward.
Sampling with the HF backend is seeded per response (``ppo.algorithm.gumbel_noise``): a response depends on its
seed only, so one process and eight sample the same rollouts, and a resumed run samples what the uninterrupted one
did.
"""

from __future__ import annotations

import importlib.util
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ppo.algorithm import gumbel_noise
from ppo.shaping import first_true


class GumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling from softmax(logits / T) with each row's own noise, and records the
    log-probability of every token it picks."""

    def __init__(self, seeds: torch.Tensor, temperature: float, prompt_length: int):
        self.seeds, self.temperature, self.prompt_length = seeds, temperature, prompt_length
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        noise = gumbel_noise(self.seeds, input_ids.shape[1] - self.prompt_length, logits.shape[-1])
        chosen = (logits + noise.to(logits.device)).argmax(dim=-1, keepdim=True)
        self.logprobs.append((logits.gather(-1, chosen) - torch.logsumexp(logits, -1, keepdim=True)).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


@contextmanager
def generation_config(model, config: GenerationConfig):
    """Generate with exactly ``config``: the model's own generation_config.json (a hub model's top_k, repetition
    penalty, ...) would otherwise add its processors and change the distribution PPO's ratio assumes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = config
    try:
        yield
    finally:
        base.generation_config = saved


@torch.no_grad()
def hf_generate(
    policy,
    queries: torch.Tensor,
    seeds: torch.Tensor,
    *,
    pad_token_id: int,
    stop_token_id: int | None,
    max_new_tokens: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses ``[B, n]`` (n <= max_new_tokens: generation stops once every row has ended) and their log-probs."""
    attention = queries != pad_token_id
    sampler = GumbelSampler(seeds, temperature, queries.shape[1])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_id,
        pad_token_id=pad_token_id,
        top_k=None,
        top_p=None,
        temperature=None,
    )
    with generation_config(policy, config):
        sequences = policy.generate(
            input_ids=queries.masked_fill(~attention, 0),
            attention_mask=attention.long(),
            logits_processor=LogitsProcessorList([sampler]),
        )
    responses = sequences[:, queries.shape[1] :]
    return responses, torch.stack(sampler.logprobs, dim=1)[:, : responses.shape[1]]


def check_vllm_available() -> None:
    """vLLM needs a CUDA GPU and the optional extra; say so before any model loads."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "generation_backend: vllm needs a CUDA GPU, and none is visible here. Use generation_backend: hf "
            "(transformers generate, the default), or run on a GPU machine."
        )
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "generation_backend: vllm needs the vllm package: `pip install -e .[vllm]` (see the README's PPO "
            "section for the versions that match this torch), or use generation_backend: hf."
        )


class VLLMGenerator:
    """vLLM colocated with the trainer on the same GPU, one engine per process.

    After each update the policy's weights are pushed into the engine; with LoRA only the adapter is saved and handed
    to vLLM as a new LoRA request, which costs megabytes instead of the whole model.
    """

    def __init__(self, model_path: str | Path, tokenizer, config, use_lora: bool, seed: int):
        from vllm import LLM

        self.use_lora, self.tokenizer, self.config = use_lora, tokenizer, config
        self.llm = LLM(
            model=str(model_path),
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            seed=seed,
            max_model_len=config.max_prompt_length + config.response_length,
            enable_lora=use_lora,
            max_lora_rank=config.lora_r if use_lora else 16,
            distributed_executor_backend="external_launcher",
            enable_prefix_caching=True,
        )
        self.adapter_dir = Path(tempfile.mkdtemp(prefix="ppo-adapter-"))
        self.version = 0

    def push(self, policy) -> None:
        """The policy's current weights into the engine (``policy``: unwrapped, gathered under ZeRO-3)."""
        self.version += 1
        if self.use_lora:
            policy.save_pretrained(self.adapter_dir / str(self.version))
            return
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, param in policy.state_dict().items():
            engine_model.load_weights([(name, param)])
        self.llm.reset_prefix_cache()

    def generate(
        self, queries: torch.Tensor, seeds: torch.Tensor, pad_token_id: int, stop_token_id: int | None
    ) -> torch.Tensor:
        from vllm import SamplingParams, TokensPrompt
        from vllm.lora.request import LoRARequest

        prompts = [TokensPrompt(prompt_token_ids=row[row != pad_token_id].tolist()) for row in queries]
        params = [
            SamplingParams(
                temperature=self.config.temperature,
                top_k=-1,
                top_p=1.0,
                seed=int(s),
                max_tokens=self.config.response_length,
                stop_token_ids=[stop_token_id] if stop_token_id is not None else None,
                ignore_eos=stop_token_id is None,
            )
            for s in seeds
        ]
        lora = LoRARequest(f"policy-{self.version}", self.version, str(self.adapter_dir / str(self.version)))
        outputs = self.llm.generate(prompts, params, lora_request=lora if self.use_lora else None, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
        width = max(len(t) for t in tokens)
        out = torch.full((len(tokens), width), pad_token_id, dtype=torch.long)
        for i, t in enumerate(tokens):
            out[i, : len(t)] = torch.tensor(t)
        return out.to(queries.device)


def truncate_after_stop(responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int) -> torch.Tensor:
    """Everything after the first stop token becomes padding (the stop token itself stays)."""
    if stop_token_id is None:
        return responses
    stop = first_true(responses == stop_token_id)
    after = torch.arange(responses.shape[1], device=responses.device)[None, :] > stop[:, None]
    return responses.masked_fill(after, pad_token_id)
