"""Qwen3.5's multi-token prediction module (`mtp.*`), built from transformers' own layers, and the tap that feeds it.

Released Qwen3.5 checkpoints carry one MTP layer that vLLM and SGLang run as the draft model of speculative
decoding (vLLM `models/qwen3_5_mtp.py`, `Qwen3_5MultiTokenPredictor.forward`). At position t it reads the trunk's
final hidden state h_t, after the trunk's final norm (what the LM head reads and what vLLM's target model returns),
and the embedding of token t+1 (the trunk's input embedding, images merged in):

    x_t = fc(concat(pre_fc_norm_embedding(embed(x_{t+1})), pre_fc_norm_hidden(h_t)))    fc: [H, 2H], no bias
    y_t = norm(layer(x_t))                      one gated full-attention decoder layer with the trunk's MoE geometry,
                                                at the rotary position of t, under the trunk's full-attention mask
    logits_t = lm_head(y_t)                     the trunk's head (shared): predicts token t+2

The layer is transformers' `Qwen3_5MoeDecoderLayer` built as a full-attention layer, so AutoEP replaces its MoE block
like the trunk's (`autoep_shims.moe_layer_pattern`), and the norms are Qwen3.5's zero-centred RMSNorm. transformers
has no MTP module and drops `mtp.*` on load; attached as `model.mtp`, the parameter names are the released ones
(`mtp.fc.weight`, `mtp.pre_fc_norm_embedding.weight`, `mtp.pre_fc_norm_hidden.weight`, `mtp.layers.0.*`,
`mtp.norm.weight`), so import, checkpoints and export need no key map of their own.

`TrunkTap` collects what the module reads from one trunk forward without changing that forward: the input embeddings
(layer 0's input), the rotary embeddings, mask and position ids a full-attention layer of the trunk received (so
packed documents stay apart in the MTP layer exactly as in the trunk's), and the final norm's output.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
    Qwen3_5MoeDecoderLayer,
    Qwen3_5MoeRMSNorm,
    Qwen3_5MoeSparseMoeBlock,
)

MTP_PREFIX = "mtp."
SUPPORTED_LAYERS = (0, 1)  # released Qwen3.5 checkpoints have mtp_num_hidden_layers=1
_MTP_LAYER_KEY = re.compile(r"^mtp\.layers\.(\d+)\.")


def text_model(model: nn.Module) -> nn.Module:
    """The trunk's text decoder (`model.model.language_model` of Qwen3.5-MoE)."""
    inner = getattr(model, "model", None)
    text = getattr(inner, "language_model", None)
    if text is None:
        raise ValueError(f"{type(model).__name__} has no model.language_model: multi-token prediction is built for "
                         "Qwen3.5-MoE (model.family=qwen3_5_moe)")
    return text


class MultiTokenPredictor(nn.Module):
    """`mtp.*`: the draft head that predicts token t+2 from the trunk's hidden state at t and token t+1."""

    def __init__(self, text_config, num_layers: int = 1) -> None:
        super().__init__()
        if num_layers not in SUPPORTED_LAYERS[1:]:
            raise ValueError(f"model.mtp_layers={num_layers}: only 1 MTP layer is supported (released Qwen3.5 "
                             "checkpoints have mtp_num_hidden_layers=1; vLLM chains one layer for more draft tokens)")
        config = copy.deepcopy(text_config)
        config.layer_types = ["full_attention"] * num_layers
        h, eps = config.hidden_size, config.rms_norm_eps
        self.config = config
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList(Qwen3_5MoeDecoderLayer(config, i) for i in range(num_layers))
        self.norm = Qwen3_5MoeRMSNorm(h, eps=eps)
        self.pre_fc_norm_hidden = Qwen3_5MoeRMSNorm(h, eps=eps)
        self.pre_fc_norm_embedding = Qwen3_5MoeRMSNorm(h, eps=eps)

    def forward(self, trunk: TrunkOutputs) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(normed hidden states [B, T, H] whose logits predict token t+2, router logits per MTP layer [B*T, E]).

        The last position has no token t+1: it gets a zero embedding and predicts nothing (causal attention keeps
        every earlier position from seeing it)."""
        embeds = trunk.inputs_embeds
        next_embeds = torch.cat([embeds[:, 1:], torch.zeros_like(embeds[:, :1])], dim=1)
        x = torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(trunk.hidden)], dim=-1)
        x = self.fc(x)
        router_logits: list[torch.Tensor] = []
        for layer in self.layers:
            with _capture_router_logits(layer.mlp, router_logits):
                x = layer(x, **trunk.attention_kwargs)
        return self.norm(x), tuple(router_logits)


class _capture_router_logits:
    """Collect one MoE block's router logits: AutoEP's layer returns (output, logits); transformers' block keeps
    them inside, from its router (`gate`)."""

    def __init__(self, mlp: nn.Module, sink: list[torch.Tensor]) -> None:
        self.mlp, self.sink = mlp, sink

    def __enter__(self) -> None:
        if isinstance(self.mlp, Qwen3_5MoeSparseMoeBlock):
            self.handle = self.mlp.gate.register_forward_hook(lambda m, a, out: self.sink.append(out[0]))
        else:
            self.handle = self.mlp.register_forward_hook(self._from_tuple)

    def _from_tuple(self, module, args, out) -> None:
        if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
            self.sink.append(out[1])

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@dataclass
class TrunkOutputs:
    """What one trunk forward hands the MTP module."""

    inputs_embeds: torch.Tensor  # [B, T, H], images merged in
    hidden: torch.Tensor  # [B, T, H], after the final norm
    # position_embeddings, attention_mask, position_ids (text row) and any varlen kwargs (cu_seq_lens_*) exactly as a
    # full-attention layer of the trunk received them
    attention_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def text_positions(self) -> torch.Tensor | None:
        """[B, T] position ids restarting at 0 per packed document (None: one document per row)."""
        return self.attention_kwargs.get("position_ids")


_LAYER_KWARGS = ("position_embeddings", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                 "max_length_q", "max_length_k")


class TrunkTap:
    """Forward hooks on the trunk that record a `TrunkOutputs` per forward; `pop()` hands it over and forgets it."""

    def __init__(self, model: nn.Module) -> None:
        text = text_model(model)
        types = list(text.config.layer_types)
        if "full_attention" not in types:
            raise ValueError("multi-token prediction reuses the mask of the trunk's full-attention layers, and "
                             "text_config.layer_types has none")
        self._parts: dict[str, Any] = {}
        layers = text.layers
        self._handles = [
            layers[0].register_forward_pre_hook(self._embeds, with_kwargs=True),
            layers[types.index("full_attention")].register_forward_pre_hook(self._attention, with_kwargs=True),
            text.norm.register_forward_hook(self._hidden),
        ]

    def _embeds(self, module, args, kwargs) -> None:
        self._parts["inputs_embeds"] = args[0] if args else kwargs["hidden_states"]

    def _attention(self, module, args, kwargs) -> None:
        self._parts["attention_kwargs"] = {k: kwargs[k] for k in _LAYER_KWARGS if k in kwargs}

    def _hidden(self, module, args, output) -> None:
        self._parts["hidden"] = output

    def pop(self) -> TrunkOutputs:
        if set(self._parts) != {"inputs_embeds", "attention_kwargs", "hidden"}:
            raise RuntimeError("TrunkTap.pop() before a complete trunk forward")
        parts, self._parts = self._parts, {}
        return TrunkOutputs(**parts)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def attach_mtp(model: nn.Module, num_layers: int, initialise: bool = True) -> MultiTokenPredictor:
    """Add `model.mtp` (built in the model's dtype and attention implementation). `initialise` draws fresh weights
    with the model's own initialiser (from the global RNG: seed it identically on every rank); False leaves them for
    a checkpoint to fill."""
    text = text_model(model)
    mtp = MultiTokenPredictor(text.config, num_layers)
    mtp.to(next(model.parameters()).dtype)
    mtp.config._attn_implementation = text.config._attn_implementation
    if initialise:  # the text model's initialiser: the trunk's own layers are drawn by it too
        for module in mtp.modules():
            text._init_weights(module)
    model.mtp = mtp
    return mtp


def stored_mtp_layers(names: list[str]) -> int | None:
    """How many MTP layers a checkpoint holds (from its tensor names); None when it has no `mtp.*` at all."""
    if not any(n.startswith(MTP_PREFIX) for n in names):
        return None
    layers = {int(m.group(1)) for n in names if (m := _MTP_LAYER_KEY.match(n))}
    return max(layers) + 1 if layers else 0


def mtp_logits(model: nn.Module, trunk: TrunkOutputs,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The MTP head's logits through the trunk's (shared) LM head: at `positions` (a [B, T] bool mask; rows in
    order) or everywhere; and the MTP layers' router logits."""
    hidden, router_logits = model.mtp(trunk)
    if positions is not None:
        hidden = hidden[positions]
    return model.get_output_embeddings()(hidden), router_logits


def load_mtp(model: nn.Module, folder: str) -> int:
    """Attach `model.mtp` to a model loaded by transformers (which drops `mtp.*`) and read it from the same export
    folder; returns its number of layers, 0 (and nothing attached) when the folder has no `mtp.*`."""
    from train.models.hf_import import load_hf_weights, shard_index

    n = stored_mtp_layers(list(shard_index(folder)))
    if not n:
        return 0
    device = next(model.parameters()).device
    attach_mtp(model, n, initialise=False)
    model.mtp.to(device)
    load_hf_weights(model, folder, prefix=MTP_PREFIX)
    return n
