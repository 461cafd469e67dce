"""Token healing: let the model re-choose the prompt's last token so words continue naturally.

"The weather is beaut" ends in the token " beaut", which a model rarely sees
followed by "iful": it learned " beautiful" as one token. So the prompt's last
token is removed and the first sampled tokens are constrained to spell it out
again ("Ġbeaut" -> "Ġbeautiful", or "Ġbe" then "aut..."). The same rule keeps a
prompt that ends in a space from getting a doubled space.
"""
import bisect

import torch


class TokenHealer:
    """Knows the vocabulary as raw token strings and answers prefix questions fast."""

    def __init__(self, tokenizer):
        """Index the vocabulary of `tokenizer` (byte-level tokens, as `convert_ids_to_tokens` gives them)."""
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        self.vocab_size = max(vocab.values()) + 1
        self.token_of = {}
        for piece, token_id in vocab.items():
            if token_id not in special:
                self.token_of[token_id] = piece
        self.id_of = {piece: token_id for token_id, piece in self.token_of.items()}
        self.sorted_pieces = sorted(self.id_of)
        self._allowed = {}  # remaining text -> allowed ids; prompts end in few distinct tokens

    def split_prompt(self, prompt_ids, min_keep=1):
        """Return (ids to keep, raw piece to re-generate); the piece is '' when nothing is healed."""
        if len(prompt_ids) <= min_keep:
            return list(prompt_ids), ""
        piece = self.token_of.get(prompt_ids[-1], "")
        if not piece:  # a special token: leave it alone
            return list(prompt_ids), ""
        return list(prompt_ids[:-1]), piece

    def allowed_ids(self, remaining):
        """Ids of tokens that start with `remaining` or are a leading part of it (cached per text)."""
        if remaining not in self._allowed:
            self._allowed[remaining] = self._find_allowed(remaining)
        return self._allowed[remaining]

    def _find_allowed(self, remaining):
        start = bisect.bisect_left(self.sorted_pieces, remaining)
        allowed = []
        for piece in self.sorted_pieces[start:]:
            if not piece.startswith(remaining):
                break
            allowed.append(self.id_of[piece])
        for end in range(1, len(remaining)):
            token_id = self.id_of.get(remaining[:end])
            if token_id is not None:
                allowed.append(token_id)
        return tuple(allowed)

    def mask(self, remaining, size):
        """A boolean mask over `size` logits that is True where a token may be sampled."""
        allowed = torch.zeros(size, dtype=torch.bool)
        ids = [i for i in self.allowed_ids(remaining) if i < size]
        allowed[torch.tensor(ids, dtype=torch.long)] = True
        return allowed

    def advance(self, remaining, token_id):
        """What is still to be re-generated after sampling `token_id` ('' when healing is over)."""
        piece = self.token_of.get(token_id, "")
        if piece.startswith(remaining):
            return ""
        return remaining[len(piece):]
