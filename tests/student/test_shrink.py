"""``--model shrink:PATH:SPEC``: a student cut from a checkpoint copies exactly the chosen layers (issue 24, item 6)."""

import json

import pytest
import torch

from stepdistill.student.models import build_tiny_llama, build_tiny_student, load_student
from stepdistill.student.shrink import parse_shrink

from cli_helpers import error_line

TEXTS = ["[label] [rationale]", "the color is red", "warm", "cold", "red is a warm color", "blue is cold"] * 10
T5_SMALL = dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=4, num_decoder_layers=3)


@pytest.fixture(scope="module")
def t5_source(tmp_path_factory):
    return build_tiny_student(TEXTS, tmp_path_factory.mktemp("t5") / "src", seed=2, vocab_size=120, **T5_SMALL)


def _weights(model, prefix):
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_t5_shrink_copies_the_chosen_blocks_and_keeps_block_0s_position_bias(t5_source):
    source, _ = load_student(t5_source)
    small, tokenizer = load_student(f"shrink:{t5_source}:enc=1,3;dec=2")
    assert (small.config.num_layers, small.config.num_decoder_layers) == (2, 1)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in source.parameters())
    for stack, chosen in (("encoder", [1, 3]), ("decoder", [2])):
        for new, old in enumerate(chosen):
            mine, theirs = _weights(small, f"{stack}.block.{new}."), _weights(source, f"{stack}.block.{old}.")
            bias = "layer.0.SelfAttention.relative_attention_bias.weight"
            # block 0 of each stack holds the bias every block uses: the source's block 0's, not block `old`'s
            assert (bias in mine) == (new == 0) and bias not in theirs
            if new == 0:
                assert torch.equal(mine.pop(bias), source.state_dict()[f"{stack}.block.0.{bias}"])
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert torch.equal(small.state_dict()[f"{stack}.final_layer_norm.weight"],
                           source.state_dict()[f"{stack}.final_layer_norm.weight"])
    assert torch.equal(small.shared.weight, source.shared.weight) and small.lm_head.weight is small.shared.weight
    assert len(tokenizer) == len(load_student(t5_source)[1])


def test_layers_applies_to_both_t5_stacks_and_all_reproduces_the_outputs(t5_source):
    source, tokenizer = load_student(t5_source)
    both, _ = load_student(f"shrink:{t5_source}:layers=0,2")
    assert (both.config.num_layers, both.config.num_decoder_layers) == (2, 2)
    assert torch.equal(both.decoder.block[1].layer[2].DenseReluDense.wo.weight,
                       source.decoder.block[2].layer[2].DenseReluDense.wo.weight)
    copy, _ = load_student(f"shrink:{t5_source}:layers=all")
    enc = tokenizer(["the color is red", "blue is cold"], padding=True, return_tensors="pt")
    decoder_ids = torch.tensor([[0, 5, 7, 9], [0, 8, 3, 4]])
    with torch.no_grad():
        expected = source(**enc, decoder_input_ids=decoder_ids).logits
        assert torch.equal(copy(**enc, decoder_input_ids=decoder_ids).logits, expected)
        assert not torch.allclose(both(**enc, decoder_input_ids=decoder_ids).logits, expected, atol=1e-3)


def test_llama_shrink_copies_decoder_layers_and_all_reproduces_the_outputs(tmp_path):
    path = build_tiny_llama(TEXTS, tmp_path / "llama", seed=1, vocab_size=300, num_hidden_layers=3)
    source, tokenizer = load_student(path)
    small, _ = load_student(f"shrink:{path}:layers=2")
    assert small.config.num_hidden_layers == 1 and len(small.model.layers) == 1
    mine, theirs = _weights(small, "model.layers.0."), _weights(source, "model.layers.2.")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(small.model.norm.weight, source.model.norm.weight)
    ids = tokenizer(["the color is red"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(load_student(f"shrink:{path}:layers=0,1,2")[0](input_ids=ids).logits,
                           source(input_ids=ids).logits)
    with pytest.raises(ValueError, match="enc= needs an encoder-decoder; this model is decoder-only"):
        load_student(f"shrink:{path}:enc=0")


def test_a_run_folder_is_a_shrink_source(t5_source, tmp_path):
    """A `stepdistill train` run folder: the weights are in model/, its own config.json is the training config."""
    source, tokenizer = load_student(t5_source)
    run = tmp_path / "run"
    source.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "model" / "stepdistill.json").write_text(json.dumps({"task": "esnli", "lora": None}))
    (run / "config.json").write_text(json.dumps({"model": "tiny", "method": "step-by-step"}))
    small, _ = load_student(f"shrink:{run}:enc=3")
    assert torch.equal(small.encoder.block[0].layer[1].DenseReluDense.wi.weight,
                       source.encoder.block[3].layer[1].DenseReluDense.wi.weight)


@pytest.mark.parametrize("spec, message", [
    ("shrink:/x:layers=2,1", "layers=2,1: layer indices must increase without repeats"),
    ("shrink:/x:layers=0,0", "must increase without repeats"),
    ("shrink:/x:layers=a", "layers=a: expected layer indices like 0,2,4 or all"),
    ("shrink:/x:depth=2", "unknown part 'depth' (layers=, enc=, dec=)"),
    ("shrink:/x:layers=1;enc=0", "give layers= or enc=/dec=, not both"),
    ("shrink:/x", "expected shrink:PATH:layers=0,2,4"),
])
def test_bad_specs_are_refused_before_loading(spec, message):
    with pytest.raises(ValueError, match="option --model: 'shrink:") as caught:
        parse_shrink(spec)
    assert message in str(caught.value)


def test_bad_layers_and_folders_are_one_error_line(t5_source, tmp_path, capsys):
    with pytest.raises(ValueError) as caught:
        load_student(f"shrink:{t5_source}:dec=1,3")
    assert str(caught.value).endswith("layer 3 does not exist (decoder.block has 3 layers, 0-2)")
    with pytest.raises(ValueError, match="no such folder"):
        load_student(f"shrink:{tmp_path / 'missing'}:layers=0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model in it"):
        load_student(f"shrink:{tmp_path / 'empty'}:layers=0")
    line = error_line(capsys, ["train", "--task", "esnli", "--model", "shrink:/x:layers=3,1",
                               "--output-dir", str(tmp_path / "out")])
    assert line == ("error: option --model: 'shrink:/x:layers=3,1': layers=3,1: layer indices must increase "
                    "without repeats")


def test_a_lora_run_is_merged_before_it_is_cut(tmp_path):
    """A LoRA run's model/ holds adapters only: the source is its base with the adapters merged."""
    from stepdistill.student.predict import merged_model
    from stepdistill.student.trainer import TrainConfig, run_training

    from student_toy import toy_records, toy_task

    records = toy_records()[:8]
    config = TrainConfig(model="tiny", lora_r=4, max_steps=2, batch_size=8, learning_rate=5e-2, eval_steps=2,
                         max_target_length=16, tiny_overrides={**T5_SMALL, "num_layers": 2, "num_decoder_layers": 2})
    run_training(toy_task(), records, records[:2], [], config, tmp_path / "lora")
    merged, _ = merged_model(tmp_path / "lora")
    base, _ = load_student(tmp_path / "lora" / "student-init")
    small, _ = load_student(f"shrink:{tmp_path / 'lora'}:layers=1")
    q = "layer.0.SelfAttention.q.weight"
    assert torch.equal(small.state_dict()[f"encoder.block.0.{q}"], merged.state_dict()[f"encoder.block.1.{q}"])
    assert not torch.equal(small.state_dict()[f"encoder.block.0.{q}"], base.state_dict()[f"encoder.block.1.{q}"])
