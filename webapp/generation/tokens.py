"""The model's vocabulary as the engine uses it: text to ids (with where each token ends), ids back to text."""
import functools
import itertools
import re

from .detokenizer import REPLACEMENT

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback (Llama): one byte per token


@functools.cache
def byte_level_alphabet():
    """GPT-2's byte-level BPE alphabet, inverted: the printable character standing for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


def spell(raw):
    """Bytes as text: whole UTF-8 characters as themselves, a stray byte of a split character as <0xE4>."""
    out, at = [], 0
    while at < len(raw):
        for size in (1, 2, 3, 4):
            try:
                out.append(raw[at:at + size].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            at += size
            break
        else:
            out.append(f"<0x{raw[at]:02X}>")
            at += 1
    return "".join(out)


class Vocabulary:
    """A tokenizer's encoding and decoding, with every single token's text remembered once decoded."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pieces = {}  # token id -> its text

    def ids(self, text):
        """The token ids of `text` as the model reads it (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def ids_with_ends(self, text):
        """Token ids of `text` and where each token ends in it, counted in UTF-16 code units (as JavaScript counts)."""
        if not text:
            return [], []
        if not self.tokenizer.is_fast:  # no offsets: add up the decoded pieces
            ids = self.ids(text)
            ends = list(itertools.accumulate(len(self.piece(token)) for token in ids))
        else:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, ends = encoded["input_ids"], [end for _, end in encoded["offset_mapping"]]
        utf16 = [0, *itertools.accumulate(2 if ord(char) > 0xFFFF else 1 for char in text)]
        ends = list(itertools.accumulate((min(end, len(text)) for end in ends), max))  # never backwards
        if ends:
            ends[-1] = len(text)  # trailing text the offsets leave out belongs to the last token
        return ids, [utf16[end] for end in ends]

    def piece(self, token):
        """The text of one token, remembered: scoring and the distribution chart show thousands of them."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.decode([token])
        return piece

    def token_bytes(self, token):
        """The bytes one token stands for (byte-level BPE or byte fallback), or None where the vocabulary says not."""
        name = self.tokenizer.convert_ids_to_tokens(token)
        found = BYTE_TOKEN.fullmatch(name)
        if found:
            return bytes([int(found.group(1), 16)])
        alphabet = byte_level_alphabet()
        return bytes(alphabet[char] for char in name) if all(char in alphabet for char in name) else None

    def shown(self, ids):
        """The text of a run of tokens for the learning views: never a "\ufffd" for a character split between tokens.

        A token holding part of a character (byte-level BPE splits Japanese and emoji) shows
        the bytes it holds, as <0xE4>; a run that holds whole characters shows them.
        """
        pieces = [self.piece(token) for token in ids]
        if not any(REPLACEMENT in piece for piece in pieces):
            return "".join(pieces)
        raw = [self.token_bytes(token) for token in ids]
        return spell(b"".join(raw)) if None not in raw else self.decode(ids)

    def decode(self, ids):
        """The text of `ids`, special tokens and spacing kept as they are."""
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
