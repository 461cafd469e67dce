"""Turn a stream of token ids into a stream of text that never splits a character."""

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class StreamingDetokenizer:
    """Decode one option's tokens as they arrive, holding back partial characters.

    Byte-level BPE can split one character (Japanese, emoji) over several tokens.
    Like text-generation-inference, keep two offsets: text is decoded from
    `prefix_offset` so that tokenizers which treat a leading space specially still
    decode the same way, and only the part after `read_offset` is new. Text that
    ends in U+FFFD is held until the rest of the character arrives.
    """

    def __init__(self, tokenizer, context_ids=(), skip_chars=0):
        """Start after `context_ids` (already shown); drop the first `skip_chars` characters of output."""
        self.tokenizer = tokenizer
        self.ids = list(context_ids)
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.skip_chars = skip_chars

    def push(self, token_id):
        """Add one token; return the text that is now complete ('' if none)."""
        self.ids.append(token_id)
        return self._take(final=False)

    def flush(self):
        """Return whatever is held back, even an incomplete character, at the end of a stream."""
        return self._take(final=True)

    def _take(self, final):
        shown = self._decode(self.ids[self.prefix_offset:self.read_offset])
        current = self._decode(self.ids[self.prefix_offset:])
        if len(current) <= len(shown) or (current.endswith(REPLACEMENT) and not final):
            return ""
        new_text = current[len(shown):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._skip(new_text)

    def _skip(self, text):
        # Token healing re-generates text the user already typed: drop it once.
        dropped = min(self.skip_chars, len(text))
        self.skip_chars -= dropped
        return text[dropped:]

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
