"""A transformers model behind the commerce env's agent interface: render, generate greedily, parse tool calls.

The model is an export folder loaded with transformers' own classes, i.e. the artefact a user would serve.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from train.eval.commerce_env.tool_call_parsing import parse_tool_calls
from train.models.build import FAMILIES

TOOL_CALL_STYLE = {"qwen3_moe": "qwen3_json", "qwen3_5_moe": "qwen3_5_xml"}


def load_export(model_path: str | os.PathLike, device_map: str | None = None, dtype: torch.dtype = torch.float32,
                attn_implementation: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The model (transformers' class for its model_type), its tokenizer, and its family name; `eager` attention
    where its weights are wanted (transformers' default otherwise)."""
    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"model_path={str(path)!r}: no config.json (expects an export folder)")
    model_type = json.loads(config_file.read_text())["model_type"]
    family = next((f for f, (cfg_cls, _) in FAMILIES.items() if cfg_cls.model_type == model_type), None)
    if family is None:
        raise ValueError(f"{config_file}: model_type {model_type!r} is not one of {sorted(FAMILIES)}")
    model_cls = FAMILIES[family][1]
    model = model_cls.from_pretrained(path, dtype=dtype, device_map=device_map, trust_remote_code=False,
                                      use_safetensors=True, attn_implementation=attn_implementation).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model, tokenizer, family


@dataclass
class ModelAgent:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    style: str
    max_new_tokens: int = 160
    render_tools: bool = False

    @torch.no_grad()
    def __call__(self, messages: list[dict], tools: list[dict]) -> dict:
        prompt = self.tokenizer.apply_chat_template(
            messages, tools=tools if self.render_tools else None, add_generation_prompt=True, tokenize=False,
            enable_thinking=False)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(self.model.device)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, eos_token_id=end, pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=False)
        message = parse_tool_calls(text, self.style, tools).message()
        message["num_generated_tokens"] = int(new.numel())
        return message
