"""The local causal-LM teacher on tiny randomly initialised models (GPT-2 without a chat template, Llama with
one) and tokenizers built here (no hub)."""

import asyncio
import json

import pytest

from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.hf_teacher import HFTeacher, auto_device, chat_messages, cut_at_stop
from stepdistill.teacher.teachers import GenerationParams, make_teacher

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
    # no chat template: the prompt is sent as it is, and the cache key says so
    assert single.render(PROMPTS[1]) == PROMPTS[1] and single.key_params(params)["prompt_format"] == "raw"


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


# -- chat template (instruct models) ---------------------------------------------------------------------------

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT_SPECIALS = ["<|end|>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]  # <|end|> is id 0
FEW_SHOT = ("Premise: A dog runs.\nHypothesis: An animal moves.\nReasonings: A dog is an animal.\nAnswer: entailment\n\n"
            "Premise: A cat sleeps.\nHypothesis: A cat runs.\nReasonings: Sleeping is not running.\nAnswer: contradiction\n\n"
            "Premise: A man sings.\nHypothesis: A man makes a sound.\nReasonings:")


def save_tiny_chat_llama(path, chat_template=CHAT_TEMPLATE):
    """A tiny random Llama whose tokenizer has a chat template; <|end|> (id 0) is the model's end of turn."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS + [FEW_SHOT], trainers.BpeTrainer(vocab_size=140, special_tokens=CHAT_SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=[0, 1], pad_token_id=None, initializer_range=0.5,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    return save_tiny_chat_llama(tmp_path_factory.mktemp("tiny-chat-llama"))


def test_chat_prompt_is_exactly_what_the_template_gives(chat_model_dir):
    teacher = HFTeacher(str(chat_model_dir))
    # demonstrations become user/assistant turns; the query's answer cue opens the assistant turn, left open
    assert teacher.render(FEW_SHOT) == (
        "<|user|>Premise: A dog runs.\nHypothesis: An animal moves.<|end|>\n"
        "<|assistant|>Reasonings: A dog is an animal.\nAnswer: entailment<|end|>\n"
        "<|user|>Premise: A cat sleeps.\nHypothesis: A cat runs.<|end|>\n"
        "<|assistant|>Reasonings: Sleeping is not running.\nAnswer: contradiction<|end|>\n"
        "<|user|>Premise: A man sings.\nHypothesis: A man makes a sound.<|end|>\n"
        "<|assistant|>Reasonings:")
    with_system = HFTeacher(str(chat_model_dir), system_prompt="Be brief.")
    assert with_system.render("Say hi.") == "<|system|>Be brief.<|end|>\n<|user|>Say hi.<|end|>\n<|assistant|>"
    assert HFTeacher(str(chat_model_dir), prompt_format="raw").render(FEW_SHOT) == FEW_SHOT


def test_chat_messages_keep_an_instruction_block_and_odd_prompts():
    prompt = "Answer briefly.\n\nQ: 1 + 1?\nA: 2.\n\nQ: 2 + 2?\nA:"
    assert chat_messages(prompt) == [{"role": "user", "content": "Answer briefly.\n\nQ: 1 + 1?"},
                                     {"role": "assistant", "content": "A: 2."},
                                     {"role": "user", "content": "Q: 2 + 2?"}, {"role": "assistant", "content": "A:"}]
    assert chat_messages("Translate: cat") == [{"role": "user", "content": "Translate: cat"}]  # no cue line
    assert chat_messages("Q: x\nA:", "S") == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q: x"},
                                             {"role": "assistant", "content": "A:"}]


def test_chat_generation_is_batched_and_counts_the_rendered_prompt(chat_model_dir):
    from transformers import AutoTokenizer

    prompts = [FEW_SHOT, FEW_SHOT.replace("A man sings", "A woman"), "Premise: a cat sleeps.\nReasonings:"]
    params = GenerationParams(max_new_tokens=10)
    batched = HFTeacher(str(chat_model_dir), batch_size=3).generate_sync(prompts, params)
    single = HFTeacher(str(chat_model_dir), batch_size=1)
    assert [r.outputs for r in batched] == [single.generate_sync([p], params)[0].outputs for p in prompts]
    assert all(r.outputs[0] for r in batched)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    # the chat text is tokenized without an extra BOS: the template writes its own special tokens
    assert [r.prompt_tokens for r in batched] == [len(tokenizer(single.render(p), add_special_tokens=False)["input_ids"])
                                                  for p in prompts]


def test_end_of_turn_token_ends_the_answer(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    path = save_tiny_chat_llama(tmp_path / "ends")
    model = LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # equal logits: greedy picks id 0, <|end|>, the end of turn (not the tokenizer's eos)
    model.save_pretrained(path)
    reply = HFTeacher(str(path)).generate_sync([FEW_SHOT], GenerationParams(max_new_tokens=8))[0]
    assert reply.outputs == [""] and reply.finish_reasons == ["stop"] and reply.completion_tokens == 0


def test_cache_records_the_prompt_format(chat_model_dir, tmp_path):
    examples = [{"id": i, "premise": f"A man sings {i}.", "hypothesis": "A man makes a sound.", "label": "entailment"}
                for i in range(2)]
    template = tmp_path / "t.txt"
    template.write_text(FEW_SHOT.rsplit("\n\n", 1)[0] + "\n\nPremise: {premise}\nHypothesis: {hypothesis}\nReasonings:")
    params = GenerationParams(max_new_tokens=6)
    results = {}
    for name, options in {"chat": {}, "raw": {"prompt_format": "raw"}, "system": {"system_prompt": "Be brief."}}.items():
        generator = RationaleGenerator("esnli", HFTeacher(str(chat_model_dir), batch_size=2, **options),
                                       tmp_path / "cache.jsonl", template=template, params=params, progress=False)
        results[name] = generator.run(examples)
        assert results[name].summary.generated == 2  # a different prompt format is never answered from the cache
    chat, raw, system = (results[name].records[0] for name in ("chat", "raw", "system"))
    assert chat["params"] == {**params.as_dict(), "dtype": "float32", "prompt_format": "chat"}
    assert raw["params"]["prompt_format"] == "raw" and "system_prompt" not in raw["params"]
    assert system["params"]["system_prompt"] == "Be brief."
    assert len({chat["key"], raw["key"], system["key"]}) == 3
    assert chat["prompt_hash"] == raw["prompt_hash"]  # the same few-shot text; the format is in the key
    assert chat["usage"]["prompt_tokens"] != raw["usage"]["prompt_tokens"]
    lines = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert [line["params"]["prompt_format"] for line in lines] == ["chat", "chat", "raw", "raw", "chat", "chat"]


def test_a_prompt_longer_than_the_context_is_a_recorded_failure(tiny_model_dir):
    teacher = HFTeacher(str(tiny_model_dir), batch_size=2)  # GPT-2 context: 256 positions
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 40
    short, too_long = teacher.generate_sync(["A dog runs", long_prompt], GenerationParams(max_new_tokens=8))
    assert short.outputs and short.error is None
    assert too_long.outputs == [] and too_long.error == "prompt_too_long"
    assert too_long.error_detail == (f"{too_long.prompt_tokens} prompt tokens + max_new_tokens 8 exceed the model's "
                                     "context of 256 tokens") and too_long.prompt_tokens > 248


def test_options_are_checked(tiny_model_dir, chat_model_dir):
    import torch

    with pytest.raises(ValueError, match=r"^hf teacher: dtype must be one of auto, float32, bfloat16, float16, got 'fp8'$"):
        HFTeacher(str(tiny_model_dir), dtype="fp8")
    with pytest.raises(ValueError, match=r"^hf teacher: prompt_format must be one of auto, chat, raw, got 'chatml'$"):
        HFTeacher(str(tiny_model_dir), prompt_format="chatml")
    with pytest.raises(ValueError, match=r"^hf teacher: device 'gpu0' is not a torch device"):
        HFTeacher(str(tiny_model_dir), device="gpu0").key_params(GenerationParams())
    with pytest.raises(ValueError, match=r"prompt_format 'chat' but the tokenizer of .* has no chat template$"):
        HFTeacher(str(tiny_model_dir), prompt_format="chat").render("x")
    with pytest.raises(ValueError, match=r"^hf teacher: cannot load a tokenizer from '/no/such/model'"):
        make_teacher("hf:/no/such/model", "esnli").key_params(GenerationParams())
    teacher = HFTeacher(str(chat_model_dir), dtype="bfloat16")
    reply = teacher.generate_sync([FEW_SHOT], GenerationParams(max_new_tokens=4))[0]
    assert teacher._model.dtype == torch.bfloat16 and reply.completion_tokens > 0
    assert teacher.key_params(GenerationParams())["dtype"] == "bfloat16"


def test_make_teacher_resolves_short_names(tmp_path, monkeypatch):
    from stepdistill import pretrained

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "SmolLM2.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(pretrained, "locate_gguf", lambda spec: tmp_path / "SmolLM2.gguf")
    monkeypatch.setattr(pretrained, "convert_gguf", lambda gguf, out: save_tiny_chat_llama(out))
    teacher = make_teacher("hf:smollm2-135m", "esnli", batch_size=2, dtype="float32")
    assert isinstance(teacher, HFTeacher) and teacher.model_id == "hf:smollm2-135m"
    reply = teacher.generate_sync([FEW_SHOT], GenerationParams(max_new_tokens=4))[0]
    assert teacher.path == str(tmp_path / "cache" / "smollm2-135m") and reply.completion_tokens > 0
    assert teacher.render("Q: x\nA:") == "<|user|>Q: x<|end|>\n<|assistant|>A:"  # the converted chat template
    import stepdistill
    from stepdistill.teacher import teachers

    assert teachers.HFTeacher is stepdistill.HFTeacher is HFTeacher  # still importable from its old module


# -- candidate scores after the teacher's own rationale (--label-logprobs, issue 24) ---------------------------

@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "chat_model_dir"])
def test_label_logprobs_score_every_candidate_after_the_rationale(model_fixture, request, tmp_path):
    import math

    import torch

    from stepdistill.teacher.teachers import Reply

    teacher = HFTeacher(str(request.getfixturevalue(model_fixture)), device="cpu")
    answer = "A dog is an animal.\nAnswer: neutral"  # the random model's own text would not parse: fix the answer
    teacher._generate = lambda texts, params: [Reply(outputs=[answer], finish_reasons=["stop"]) for _ in texts]
    template = tmp_path / "short.txt"
    template.write_text("Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
    examples = [{"id": 0, "premise": "A dog runs.", "hypothesis": "An animal is moving.", "label": "entailment"},
                {"id": 1, "premise": "A cat sleeps.", "hypothesis": "A cat runs.", "label": "contradiction"}]
    generator = RationaleGenerator("esnli", teacher, tmp_path / "hf.jsonl", template=template, progress=False,
                                   params=GenerationParams(max_new_tokens=8, label_logprobs=True))
    records = generator.run(examples).records
    assert records[0]["params"]["label_logprobs"] is True and "top_logprobs" not in records[0]["params"]
    model, tokenizer = teacher._load()
    for example, record in zip(examples, records):
        # by hand: the context and each candidate (" neutral": the space the model writes before it) encoded apart
        prompt = template.read_text().format(**example)
        context = tokenizer(teacher.render(prompt) + "A dog is an animal.\nAnswer:",
                            add_special_tokens=not teacher.uses_chat)["input_ids"]
        scores = {}
        for label in ("entailment", "neutral", "contradiction"):
            target = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([context + target])).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            scores[label] = sum(float(logprobs[len(context) - 1 + k, token]) for k, token in enumerate(target))
        total = math.log(sum(math.exp(v) for v in scores.values()))
        assert record["status"] == "ok" and record["label_logprobs_source"] == "scores"
        assert record["label_logprobs"] == pytest.approx({k: v - total for k, v in scores.items()}, abs=1e-5)
        assert record["label_logprob_rest"] is None
    assert records[0]["label_logprobs"] != records[1]["label_logprobs"]  # the prompt matters


# -- every generated token's top-k (--token-logprobs, issue 24 item 3) -------------------------------------------

def test_token_logprobs_are_the_teacher_forced_top_k(tiny_model_dir):
    import torch

    teacher = HFTeacher(str(tiny_model_dir), device="cpu", batch_size=2)
    params = GenerationParams(max_new_tokens=6, token_logprobs=3)
    replies = teacher.generate_sync(PROMPTS[:2], params)
    model, tokenizer = teacher._load()
    for prompt, reply in zip(PROMPTS[:2], replies):
        tokens = reply.token_logprobs[0]
        assert len(tokens) == reply.completion_tokens and 0 < len(tokens) <= 6
        # by hand: one teacher-forced forward on the prompt and the generated tokens, unpadded
        ids = tokenizer(prompt)["input_ids"] + tokenizer.convert_tokens_to_ids([token for token, _, _ in tokens])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        start = len(ids) - len(tokens)
        for position, (token, logprob, alternatives) in enumerate(tokens):
            row = logprobs[start + position - 1]
            top = row.topk(3)
            assert [name for name, _ in alternatives] == tokenizer.convert_ids_to_tokens(top.indices.tolist())
            assert [value for _, value in alternatives] == pytest.approx(top.values.tolist(), abs=1e-4)
            assert logprob == pytest.approx(float(row[tokenizer.convert_tokens_to_ids(token)]), abs=1e-4)
    # the generator may ask a local teacher for more than an API's 20 (the tiny vocabulary has 120)
    teacher.check(GenerationParams(token_logprobs=50))
    from stepdistill.teacher.token_topk import check_supported

    check_supported(teacher, GenerationParams(token_logprobs=50))
