import pytest
import torch

from bertkit import BertForMaskedLM, CheckpointError, InputError, Tokenizer
from bertkit.fill_mask import FillMask

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def random_mlm(tmp_path_factory, minilm_dir):
    """A tiny random masked LM with the real bert-base-uncased vocabulary, next to transformers' copy."""
    directory = tmp_path_factory.mktemp("mlm")
    tok = Tokenizer.from_pretrained(minilm_dir)
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(vocab_size=len(tok))).save_pretrained(directory, tokenizer=tok)
    return directory


def test_probabilities_match_transformers(random_mlm):
    fill = FillMask.from_pretrained(random_mlm)
    got = fill("the capital of france is [MASK] .", top_k=3)[0]
    ref = transformers.BertForMaskedLM.from_pretrained(random_mlm).eval()
    tok = transformers.AutoTokenizer.from_pretrained(random_mlm)
    enc = tok("the capital of france is [MASK] .", return_tensors="pt")
    with torch.no_grad():
        logits = ref(**enc).logits[0, (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]]
    top = logits.softmax(-1).topk(3)
    assert [c.token for c in got] == tok.convert_ids_to_tokens(top.indices.tolist())
    assert [c.probability for c in got] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_text_without_mask_and_model_without_head(random_mlm, minilm_dir):
    with pytest.raises(InputError, match="no \\[MASK\\]"):
        FillMask.from_pretrained(random_mlm)("no mask here")
    with pytest.raises(CheckpointError, match="no masked-LM head"):
        FillMask.from_pretrained(minilm_dir)
