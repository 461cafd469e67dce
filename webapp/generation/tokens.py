"""The model's vocabulary as the engine uses it: text to ids (with where each token ends), ids back to text."""
import itertools


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

    def decode(self, ids):
        """The text of `ids`, special tokens and spacing kept as they are."""
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
