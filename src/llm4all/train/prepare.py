"""What a ``TrainingConfig`` does to a model around the loop: LoRA adapters and activation
checkpointing before it, the full (merged, gathered) weights after it."""

from __future__ import annotations

from llm4all.errors import UserError
from llm4all.train.args import TrainingConfig

#: Linears of a Llama block that get LoRA adapters (Hu et al. 2022, "LoRA", section 4.2 adapts
#: the attention projections; QLoRA, Dettmers et al. 2023, found every Linear matters)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare(net, cfg: TrainingConfig):
    """Apply a sliding window, activation checkpointing and LoRA (if configured) to ``net``;
    returns the model to train."""
    if cfg.sliding_window:
        from llm4all.models.window import with_window

        net = with_window(net, cfg.sliding_window, cfg.attention_sinks)
    limit = getattr(net.config, "max_position_embeddings", None)
    if limit and cfg.seq_len > limit:  # RoPE would run on positions the model never saw
        raise UserError(f"--seq-len {cfg.seq_len} is beyond the model's {limit} positions "
                        f"(max_position_embeddings); use --seq-len {limit} or less")
    if cfg.activation_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.config.use_cache = False
    if cfg.lora_rank and cfg.lora_base:
        from llm4all.models.lora import add_qlora

        net = add_qlora(net, LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha, cfg.lora_base)
    elif cfg.lora_rank:
        net = add_lora(net, cfg.lora_rank, cfg.lora_alpha)
    return net


def add_lora(net, rank: int, alpha: float):
    """Wrap ``net`` with LoRA adapters of ``rank`` on every block Linear (peft); base weights frozen."""
    import logging

    # peft imports bitsandbytes when installed; its CPU backend then warns, on every run, that it
    # cannot fetch 4-bit kernels from the hub (which llm4all never asks for)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("--lora-rank needs peft: pip install peft") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(net, config)


def merged(net):
    """The plain model to save: LoRA adapters folded into the weights, W + (alpha / r)·B·A
    (under QLoRA, W is the de-quantised 4-bit base the adapters were trained on)."""
    from llm4all.models.lora import has_qlora, merge

    if has_qlora(net):
        return merge(net)
    return net.merge_and_unload() if hasattr(net, "merge_and_unload") else net


def full_state(net, world: int) -> dict | None:
    """Under FSDP (``world`` > 1) the full state dict gathered on CPU (a collective); else None."""
    if world == 1:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def parameter_summary(net, source: str, cfg: TrainingConfig, world: int) -> str:
    """One line: where the model came from, its size, the tokens of a step."""
    n_params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return (f"{source}: {n_params / 1e6:.1f} M parameters ({trainable / 1e6:.2f} M trainable), "
            f"{cfg.tokens_per_step * world:,} tokens per step, {cfg.steps} steps, {world} process(es)")
