"""Where an export's full-attention heads look when it writes the start of a tool-call argument.

    .venv/bin/python -m benchmarks.copy_attention --model exports/sft --world data/commerce_world --name sft

`reference_arg_start_acc[...]` (train/eval/reference_dialogs.py) says which values the model fails to find; this
says how it finds the ones it does. Teacher-forced on held-out reference dialogs (eager attention), at the position
that predicts a value's start (the first token after the prefix all values of the argument share, as
`reference_arg_start_acc` defines it: for item and order ids the digit after the I/O), each head's most
attended earlier position is put in one of three classes: the start token itself where it occurs earlier in the
dialog (`start`, what an induction head does after the token before it), a token 1-3 positions after such an
occurrence (`after+k`: an anchor that follows the value, such as the colon of a time), or anywhere else (`other`).
The tool call's own last 8 tokens are left out (the parameter tag).
What it shows on the demo's fine-tuned model: docs/findings/tiny_model.md.
Writes benchmarks/results/copy_attention_<name>.json.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

SKIP_LAST = 8


def classify(top: int, occurrences: list[int]) -> str:
    """`start` if `top` is an earlier occurrence of the start token, `after+k` if it is k (1-3) after one."""
    offsets = [top - o for o in occurrences if 0 <= top - o <= 3]
    if not offsets:
        return "other"
    k = min(offsets)
    return "start" if k == 0 else f"after+{k}"


def argument_starts(found: list[tuple[str, list[int]]], names: tuple[str, ...],
                    prefix: dict[str, int]) -> list[tuple[str, int]]:
    """(name, position of the start token) of each argument in `found` (`reference_dialogs.argument_tokens`);
    `prefix[name]` is how many leading tokens all values of the argument share (`reference_dialogs.shared_prefix`)."""
    return [(name, tokens[prefix.get(name, 0)]) for name, tokens in found
            if name in names and len(tokens) > prefix.get(name, 0)]


@torch.no_grad()
def probe(model, tokenizer, world_dir: str, limit: int, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{"<name> layer <i> head <h>": {class: fraction of that argument's starts}} over the first `limit` test
    dialogs; layers are numbered in the whole stack (Qwen3.5's GDN layers have no attention map)."""
    from data_pipelines.collate import Collator
    from data_pipelines.encode import Encoder, EncodeSpec
    from data_pipelines.packing import pack_samples
    from train.eval.reference_dialogs import argument_tokens, shared_prefix

    path = Path(world_dir) / "dialogs" / "test.jsonl"
    encoder = Encoder(tokenizer, EncodeSpec(kind="chat", seq_len=1 << 16, render_tools=False))
    mrope = model.config.model_type == "qwen3_5_moe"
    collate = Collator("per_document", mrope=mrope)
    text = model.config.get_text_config()
    types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    full_layers = [i for i, t in enumerate(types) if t == "full_attention"]  # the only ones with attention maps
    samples = [sample for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[:limit])
               for sample in encoder(line, f"{path}:{n + 1}")]
    found = [argument_tokens(tokenizer, sample["input_ids"]) or [] for sample in samples]
    values: dict[str, list[list[int]]] = {}
    for sample, arguments in zip(samples, found, strict=True):
        for name, tokens in arguments:
            values.setdefault(name, []).append([sample["input_ids"][j] for j in tokens])
    prefix = {name: shared_prefix(v) for name, v in values.items()}
    counts: dict[str, Counter] = {}
    for sample, arguments in zip(samples, found, strict=True):
        ids = sample["input_ids"]
        batch = collate(pack_samples([sample], len(ids), "per_document", tokenizer.pad_token_id))
        out = model(**batch["inputs"], output_attentions=True, use_cache=False)
        layers = list(zip(full_layers, [a[0] for a in out.attentions if a is not None], strict=True))
        for name, start in argument_starts(arguments, names, prefix):
            query = start - 1
            if query <= SKIP_LAST:
                continue
            occurrences = [i for i in range(query - SKIP_LAST) if ids[i] == ids[start]]
            for layer, att in layers:
                for head in range(att.shape[0]):
                    top = int(att[head, query, : query - SKIP_LAST].argmax())
                    counts.setdefault(f"{name} layer {layer} head {head}", Counter())[classify(top, occurrences)] += 1
    return {k: {c: v / sum(n.values()) for c, v in n.most_common()} for k, n in sorted(counts.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an export folder")
    ap.add_argument("--world", required=True, help="the commerce world folder (its dialogs/test.jsonl)")
    ap.add_argument("--limit", type=int, default=40, help="reference dialogs")
    ap.add_argument("--arguments", default="city,count,item_id,max_price,order_id,time")
    ap.add_argument("--name", default="model")
    args = ap.parse_args()
    from train.eval.model_agent import load_export

    model, tokenizer, _ = load_export(args.model, None, torch.float32, attn_implementation="eager")
    result = probe(model, tokenizer, args.world, args.limit, tuple(args.arguments.split(",")))
    for key, classes in result.items():
        print(f"{key:26s} " + "  ".join(f"{c} {100 * v:.0f}%" for c, v in classes.items()))
    out = Path(__file__).parent / "results" / f"copy_attention_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "copy_attention", "args": vars(args), "heads": result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
