"""The local causal-LM teacher on a tiny randomly initialised GPT-2 with a tokenizer built here (no hub)."""

import asyncio

import pytest

from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.teachers import GenerationParams, HFTeacher, auto_device, cut_at_stop

CORPUS = ["A dog runs through a park.", "An animal is moving.", "Premise: a cat sleeps. Hypothesis: a pet rests.",
          "Answer: entailment neutral contradiction", "The quick brown fox jumps over the lazy dog. abcdef"] * 20


def _save_tiny_model(path, tokenizer_model, pre_tokenizer, trainer, decoder=None, corpus=CORPUS):
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(tokenizer_model)
    raw.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        raw.decoder = decoder
    raw.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.5)  # large weights: varied (not repetitive) greedy text
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """Byte-level BPE (alphabet of the corpus only, so generated text is readable), like real causal LMs."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    return _save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), models.BPE(unk_token="<unk>"),
                            pre_tokenizers.ByteLevel(add_prefix_space=False),
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<eos>", "<unk>"]), decoders.ByteLevel())


PROMPTS = ["A dog runs", "Premise: a cat sleeps. Hypothesis: a pet rests. Answer:", "An animal"]


def test_batched_left_padded_generation_matches_one_at_a_time(tiny_model_dir):
    params = GenerationParams(max_new_tokens=12)
    batched = HFTeacher(str(tiny_model_dir), batch_size=3).generate_sync(PROMPTS, params)
    single = HFTeacher(str(tiny_model_dir), batch_size=1)
    one_by_one = [single.generate_sync([prompt], params)[0] for prompt in PROMPTS]
    assert [r.outputs for r in batched] == [r.outputs for r in one_by_one]
    assert all(r.outputs[0] for r in batched)  # something was generated
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in one_by_one]
    assert batched[0].prompt_tokens < batched[1].prompt_tokens  # padding is not counted
    # a row ends at the token limit ("length") or at end-of-sequence ("stop", fewer tokens)
    assert all((r.finish_reasons == ["length"]) == (r.completion_tokens == 12) for r in batched)
    assert single.device == auto_device() == "cpu"


def test_stop_strings_cut_the_output(tiny_model_dir):
    teacher = HFTeacher(str(tiny_model_dir), batch_size=3)
    full = teacher.generate_sync(PROMPTS, GenerationParams(max_new_tokens=16))[0].outputs[0]
    # two letters from the middle that do not occur earlier, so that the cut is not at the start
    start = next(k for k in range(3, len(full) - 1) if full[k:k + 2].isalpha() and full.index(full[k:k + 2]) == k)
    stop = full[start:start + 2]
    replies = teacher.generate_sync(PROMPTS, GenerationParams(max_new_tokens=16, stop=(stop,)))
    assert replies[0].outputs[0] == full[: full.index(stop)]
    assert replies[0].finish_reasons == ["stop"] and replies[0].completion_tokens < 16


def test_sampling_n_and_generator_end_to_end(tiny_model_dir, tmp_path):
    teacher = HFTeacher(str(tiny_model_dir), batch_size=2)
    replies = asyncio.run(teacher.generate(PROMPTS[:2], ["a", "b"], GenerationParams(max_new_tokens=6, n=3,
                                                                                         temperature=1.0, seed=1)))
    assert [len(r.outputs) for r in replies] == [3, 3]
    examples = [{"id": i, "premise": f"A dog runs {i}.", "hypothesis": "An animal is moving.", "label": "neutral"}
                for i in range(3)]
    template = tmp_path / "short.txt"
    template.write_text("Premise: {premise}\nHypothesis: {hypothesis}\nReasonings:")
    generator = RationaleGenerator("esnli", teacher, tmp_path / "hf.jsonl", template=template,
                                   params=GenerationParams(max_new_tokens=8), progress=False)
    result = generator.run(examples)
    # a random model gives no usable answer: every record is an explicit parse failure, none is lost
    assert [r["status"] for r in result.records] == ["parse_error"] * 3
    assert all(r["raw_output"] and r["usage"]["completion_tokens"] > 0 for r in result.records)
    assert result.records[0]["model"] == tiny_model_dir.name and result.records[0]["teacher"] == "hf"
    assert sum(result.summary.parse_failures.values()) == 3 and result.summary.requests == 3


def test_stop_strings_fall_back_for_whole_word_vocabularies(tmp_path):
    from tokenizers import models, pre_tokenizers, trainers

    path = _save_tiny_model(tmp_path / "words", models.WordLevel(unk_token="<unk>"), pre_tokenizers.Whitespace(),
                            trainers.WordLevelTrainer(special_tokens=["<eos>", "<unk>"]),
                            corpus=[text.replace("abcdef", "") for text in CORPUS])  # transformers' probe word unknown
    teacher = HFTeacher(str(path))
    full = teacher.generate_sync(["A dog runs"], GenerationParams(max_new_tokens=10))[0].outputs[0]
    stop = " " + full.split()[2]
    reply = teacher.generate_sync(["A dog runs"], GenerationParams(max_new_tokens=10, stop=(stop,)))[0]
    assert reply.outputs == [full[: full.index(stop)]] and reply.finish_reasons == ["stop"]
    assert teacher._stop_strings_work is False


def test_cut_at_stop():
    assert cut_at_stop("abc\nQ: more", ("\nQ:", "zz")) == ("abc", True)
    assert cut_at_stop("a zz b \nQ:", ("\nQ:", "zz")) == ("a ", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
