"""Token healing with the real vocabulary: words continue, spaces are never doubled."""
from webapp.generation.healing import TokenHealer


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_split_removes_the_last_token(embedded):
    healer = TokenHealer(embedded.tokenizer)
    ids = ids_of(embedded.tokenizer, "The weather is beaut")
    kept, piece = healer.split_prompt(ids)
    assert kept == ids[:-1]
    assert embedded.tokenizer.convert_tokens_to_string([piece]) == " beaut"


def test_single_token_prompt_is_left_alone(embedded):
    healer = TokenHealer(embedded.tokenizer)
    ids = ids_of(embedded.tokenizer, "Hello")
    assert healer.split_prompt(ids) == (ids, "")


def test_allowed_tokens_start_with_or_lead_into_the_piece(embedded):
    tokenizer = embedded.tokenizer
    healer = TokenHealer(tokenizer)
    piece = tokenizer.convert_ids_to_tokens(ids_of(tokenizer, " beaut"))[0]
    allowed = {tokenizer.convert_ids_to_tokens(i) for i in healer.allowed_ids(piece)}
    assert tokenizer.convert_ids_to_tokens(ids_of(tokenizer, " beautiful"))[0] in allowed
    assert piece in allowed
    assert all(p.startswith(piece) or piece.startswith(p) for p in allowed)
    assert tokenizer.convert_ids_to_tokens(ids_of(tokenizer, " the"))[0] not in allowed


def test_advance_tracks_what_is_left_to_spell(embedded):
    tokenizer = embedded.tokenizer
    healer = TokenHealer(tokenizer)
    piece = tokenizer.convert_ids_to_tokens(ids_of(tokenizer, " beaut"))[0]
    assert healer.advance(piece, ids_of(tokenizer, " beautiful")[0]) == ""
    space = healer.id_of[piece[:1]]  # the lone space token leads into " beaut"
    assert healer.advance(piece, space) == piece[1:]


def test_mask_marks_allowed_ids(embedded):
    healer = TokenHealer(embedded.tokenizer)
    piece = embedded.tokenizer.convert_ids_to_tokens(ids_of(embedded.tokenizer, " beaut"))[0]
    mask = healer.mask(piece, len(embedded.tokenizer))
    assert mask.sum().item() == len(set(healer.allowed_ids(piece)))
