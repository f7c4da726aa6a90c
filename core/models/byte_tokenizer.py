"""A UTF-8 byte tokenizer with a ChatML chat template, for models built from a config.

It is a real `PreTrainedTokenizerFast` (byte-level BPE with no merges: one token per byte), so it
saves with `save_pretrained` and reloads with `AutoTokenizer`, and nothing is downloaded.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- else -%}<image>{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# ids in the order the tokenizer adds them (eos, pad, then the others). `<|im_end|>` ends every chat turn and is
# the eos: a model config built for this tokenizer takes these ids (SPECIAL_IDS), so the embeddings' padding row
# is the pad token's and `generate()` stops at the end of an assistant turn
EOS_ID, PAD_ID = 256, 257
SPECIAL_IDS = {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "bos_token_id": None}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHATML_TEMPLATE,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    assert len(tok) == VOCAB_SIZE and (tok.eos_token_id, tok.pad_token_id) == (EOS_ID, PAD_ID), len(tok)
    return tok
