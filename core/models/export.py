"""What every export (SFT, quantize) writes besides its tensors, and how its tensors are laid out on disk.

Serving engines and `generate()` read the metadata, not the training run: the input model's dtype (a bf16 model
calibrated or trained in float32 is still served in bf16), `use_cache` on (training turns it off), and eos / pad
ids that agree with the tokenizer, the end-of-turn token of its chat template included, so generation stops at
the end of an assistant turn. Weights are one `model.safetensors`, or shards plus `model.safetensors.index.json`
above `max_shard_size`, split by huggingface_hub as transformers' `save_pretrained` does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_SIZE = "5GB"  # the Hub's convention (transformers' own default is 50GB: few hosts upload that in one go)
TEXT_CONFIG_KEYS = ("text_config", "decoder", "generator")  # where transformers finds a composite model's decoder
SENTINEL = "\u2063reply\u2063"  # an assistant reply no chat template can confuse with its own markup


def export_dtype(hf_config: Any) -> torch.dtype:
    """The dtype the input model declares (config `dtype`: a torch.dtype, its name, or None = float32). A VLM that
    declares it only in its text config counts too."""
    get = hf_config.get if isinstance(hf_config, dict) else lambda key, default=None: getattr(hf_config, key, default)
    value = get("dtype") or (hf_config.get("torch_dtype") if isinstance(hf_config, dict) else None)  # older files
    for key in TEXT_CONFIG_KEYS:
        if value is None and get(key) is not None:
            value = export_dtype(get(key))
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"config dtype {value!r} is not a torch dtype")
    return dtype


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template puts right after an assistant reply (`<|im_end|>`, `<|eot_id|>`,
    `<end_of_turn>`), or None (no template, or plain text there)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": SENTINEL}], tokenize=False)
    except Exception:  # templates raise anything (jinja errors, their own checks): no end of turn then
        return None
    if not isinstance(text, str) or SENTINEL not in text:
        return None
    tail = text.split(SENTINEL, 1)[1].lstrip()
    added = tokenizer.added_tokens_decoder.values()
    specials = {*tokenizer.all_special_tokens, *(token.content for token in added if token.special)}
    for token in sorted(specials, key=len, reverse=True):
        if token and tail.startswith(token):
            return int(tokenizer.convert_tokens_to_ids(token))
    return None


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The tokenizer's eos (a list [eos, end-of-turn] when its template ends turns with another token), pad and bos
    ids; None where the tokenizer has none."""
    eos = [i for i in dict.fromkeys([tokenizer.eos_token_id, end_of_turn_id(tokenizer)]) if i is not None]
    return {"eos_token_id": eos if len(eos) > 1 else (eos[0] if eos else None),
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}


def _decoder(config: dict) -> dict:
    """The dict transformers reads a (composite) model's generation and embedding settings from."""
    return next((config[k] for k in TEXT_CONFIG_KEYS if isinstance(config.get(k), dict)), config)


def export_config(config: dict, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> dict:
    """A copy of a model config dict fixed for serving: `use_cache` true, `dtype` the exported weights' dtype
    (named as transformers writes it), eos / pad / bos ids from the tokenizer. A composite (VLM) config gets the
    ids in its text config, where transformers 5 reads them (GenerationConfig.from_model_config, the embeddings'
    padding_idx), and at its top level only where that already has them; the tokenizer's None keeps the config's."""
    out = copy.deepcopy(config)
    decoder = _decoder(out)
    sections = [out, *(v for v in out.values() if isinstance(v, dict) and "model_type" in v)]
    sections += [decoder] if all(s is not decoder for s in sections) else []
    for section in sections:
        if "dtype" in section or section is out:
            section["dtype"] = str(dtype).removeprefix("torch.")
        if "use_cache" in section or section is decoder:
            section["use_cache"] = True
    for key, value in special_ids(tokenizer).items():
        if value is None:
            continue
        decoder[key] = value
        if key in out:
            out[key] = value
    return out


def write_generation_config(directory: str | Path, config: dict, tokenizer: PreTrainedTokenizerBase) -> None:
    """generation_config.json as transformers derives it from the model config, with the tokenizer's ids (eos may
    be [eos, end-of-turn]): what `generate()` and serving engines stop and pad with."""
    from transformers import GenerationConfig

    generation = GenerationConfig.from_model_config(config)
    for key, value in special_ids(tokenizer).items():
        if value is not None:
            setattr(generation, key, value)
    generation.save_pretrained(str(directory))


def hf_state_dict(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (the model's in-memory names) as `save_pretrained` writes it: tied aliases dropped and transformers'
    load-time conversions reverted (MoE experts fused in memory are per-expert tensors on disk). `model` may be a
    meta-device shell of the same class and config."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    return revert_weight_conversion(model, remove_tied_weights_from_state_dict(dict(state), model))


def save_weights(state: dict[str, torch.Tensor], directory: str | Path,
                 max_shard_size: int | str = MAX_SHARD_SIZE) -> list[str]:
    """`state` as safetensors in `directory`: one `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
    the index when larger than `max_shard_size` (huggingface_hub's split, the index as transformers writes it).
    The file names written."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory = Path(directory)
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: state[name].contiguous() for name in names}, str(directory / filename),
                  metadata={"format": "pt"})
    if split.is_sharded:
        total = sum(t.numel() for t in state.values())
        index = {"metadata": {"total_parameters": total, **split.metadata}, "weight_map": split.tensor_to_filename}
        (directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(split.filename_to_tensors)


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of an export: the index's shards, else `model.safetensors`."""
    directory = Path(directory)
    if (directory / INDEX).is_file():
        weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    raise FileNotFoundError(f"{directory}: no {WEIGHTS} and no {INDEX}")


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an export, either layout (safetensors only: nothing pickled is read)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        state.update(load_file(str(path)))
    return state
