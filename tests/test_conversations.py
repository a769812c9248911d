"""Conversations (issue 18 items 1-2): three input shapes, assistant-token masks from a chat
template, packed windows that keep conversations apart, and a loss on the assistant's tokens."""

import json

import numpy as np
import pytest
import torch

from llm4all.data.chat import ChatEncoder, read_conversations
from llm4all.data.packing import IGNORE, ConversationSampler
from llm4all.data.shards import TokenShards
from llm4all.data.tokenize import main as tokenize
from llm4all.errors import UserError
from tinymodels import WORDS

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_three_shapes_and_our_own_output_read_as_the_same_messages(tmp_path):
    rows = [
        {"id": "oa", "messages": MESSAGES[1:3], "source": "x"},
        {"instruction": "Hi there", "output": "Hello!"},
        {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."},
        {"id": "sg", "conversations": [{"from": "human", "value": "Hi there"},
                                       {"from": "gpt", "value": "Hello!"}]},
    ]
    docs = list(read_conversations(_write(tmp_path / "c.jsonl", rows)))
    assert [d.id for d in docs] == ["oa", "c/2", "c/3", "sg"]
    assert docs[0].meta["messages"] == docs[1].meta["messages"] == docs[3].meta["messages"] == MESSAGES[1:3]
    assert docs[0].meta["source"] == "x"
    assert docs[2].meta["messages"] == [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Add\n\n2 and 3"},
                                        {"role": "assistant", "content": "5"}]
    assert docs[0].text == "user: Hi there\n\nassistant: Hello!"
    # curate's output (text + meta.messages) reads back to the same conversation
    again = list(read_conversations(_write(tmp_path / "kept.jsonl", [docs[0].to_dict()])))
    assert again[0].meta["messages"] == MESSAGES[1:3] and again[0].id == "oa"


@pytest.mark.parametrize("row, message", [
    ({"text": "a document"}, "not a conversation: expected 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "has no assistant message"),
    ({"messages": [{"role": "bot", "content": "hi"}]},
     "messages[0].role must be one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "a system message may only come first"),
    ({"instruction": "hi", "output": 3}, "field 'output' must be a string (int)"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from must be one of"),
    ('{"messages": [', "invalid JSON"),
])
def test_bad_conversations_name_the_line_and_the_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"messages": MESSAGES}, row])
    with pytest.raises(UserError, match=rf"bad.jsonl: line 2: .*{__import__('re').escape(message)}"):
        list(read_conversations(path))
    from llm4all.data.readers import Rejects

    rejects = Rejects()
    assert len(list(read_conversations(path, skip_bad=True, rejects=rejects))) == 1 and rejects.count == 1


def test_conversations_come_in_jsonl_or_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    with pytest.raises(UserError, match=r"a.txt: records of this kind come in JSONL or parquet"):
        list(read_conversations(tmp_path / "a.txt"))


def test_smollm2_template_marks_exactly_the_assistant_turns():
    from llm4all.models.load import load_tokenizer, resolve

    tok = load_tokenizer(str(resolve("smollm2-135m")))
    ids, mask = ChatEncoder(tok).encode(MESSAGES)
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(MESSAGES, tokenize=False)
    runs = np.split(ids, np.flatnonzero(np.diff(mask.astype(int))) + 1)
    flags = [bool(m[0]) for m in np.split(mask, np.flatnonzero(np.diff(mask.astype(int))) + 1)]
    answers = [tok.decode(r) for r, f in zip(runs, flags, strict=True) if f]
    assert answers == ["Hello!<|im_end|>\n", "Goodbye.<|im_end|>\n"]  # the answer and its end of turn


def test_named_templates_and_bad_ones(tiny_model, tmp_path):
    from llm4all.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    with pytest.raises(UserError, match="no chat template; name one with --chat-template"):
        ChatEncoder(tok)
    with pytest.raises(UserError, match="not a named template"):
        ChatEncoder(tok, "vicuna")
    enc = ChatEncoder(tok, "alpaca")
    text, spans = enc.spans(MESSAGES)
    assert [text[a:b] for a, b in spans] == ["Hello!</s>\n\n", "Goodbye.</s>\n\n"]
    rewriting = tmp_path / "last.jinja"  # renders only the last turn: earlier renderings are not prefixes
    rewriting.write_text("{{ messages[-1]['content'] }}")
    with pytest.raises(UserError, match="rewrites earlier turns"):
        ChatEncoder(tok, str(rewriting)).spans(MESSAGES)


def _conversations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        turns = []
        for _ in range(int(rng.integers(1, 3))):
            for role, lo, hi in (("user", 3, 12), ("assistant", 2, 9)):
                words = rng.choice(WORDS, int(rng.integers(lo, hi)))
                turns.append({"role": role, "content": " ".join(words)})
        rows.append({"id": f"c{i}", "messages": turns})
    return rows


@pytest.fixture()
def chat_shards(tiny_model, tmp_path):
    path = _write(tmp_path / "chat.jsonl", _conversations(60))
    tokenize([path], out=tmp_path / "shards", tokenizer=str(tiny_model), workers=1, val_fraction=0.2,
             format="chat", chat_template="alpaca")
    return tmp_path / "shards"


def test_tokenize_chat_writes_masks_beside_the_tokens(chat_shards):
    shards = TokenShards(chat_shards)
    assert shards.is_chat and shards.index["chat"] == {"template": "alpaca"}
    for split in ("train", "validation"):
        tokens, mask = shards.tokens(split), shards.mask(split)
        assert len(tokens) == len(mask) and 0 < mask.sum() < len(mask)
        assert shards.index["splits"][split]["assistant_tokens"] == int(mask.sum())
    (chat_shards / "train-00000.mask").write_bytes(b"\x01")  # damaged: an error, not a wrong loss
    with pytest.raises(UserError, match="assistant mask missing or truncated"):
        TokenShards(chat_shards).mask("train")


def test_packed_windows_keep_conversations_apart(tiny_model, chat_shards):
    """The loss of a packed window equals the losses of its conversations run one by one."""
    from transformers import AutoModelForCausalLM

    from llm4all.train.loop import cross_entropy_loss

    sampler = ConversationSampler(TokenShards(chat_shards), seq_len=64, seed=3)
    single = ConversationSampler(TokenShards(chat_shards), seq_len=64, seed=3, pack=False)
    train_docs = TokenShards(chat_shards).index["splits"]["train"]["docs"]
    assert len(single) + single.dropped == train_docs and len(sampler) < len(single)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    b = max(range(len(sampler)), key=lambda k: len(sampler.bins[k]))
    assert len(sampler.bins[b]) >= 3
    ids, pos, labels = sampler.window(b)
    with torch.no_grad():
        window = {"input_ids": torch.tensor(ids)[None], "position_ids": torch.tensor(pos)[None]}
        packed, _ = cross_entropy_loss(model, window, torch.tensor(labels)[None])
        total, count = 0.0, 0
        for u in sampler.bins[b]:
            s, n = int(sampler.starts[u]), int(sampler.lengths[u]) - 1
            x = torch.tensor(sampler.tokens[s : s + n])[None]
            nxt = slice(s + 1, s + n + 1)
            y = torch.tensor(np.where(sampler.mask[nxt], sampler.tokens[nxt], IGNORE))[None]
            loss, _ = cross_entropy_loss(model, x, y)
            total, count = total + loss.item() * int((y != IGNORE).sum()), count + int((y != IGNORE).sum())
        # without the position ids the conversations would see each other: a different loss
        mixed, _ = cross_entropy_loss(model, torch.tensor(ids)[None], torch.tensor(labels)[None])
    assert packed.item() == pytest.approx(total / count, rel=1e-5)
    assert abs(mixed.item() - packed.item()) > 1e-4


def test_labels_are_the_assistant_tokens_and_batches_are_pure_in_seed_and_step(chat_shards):
    shards = TokenShards(chat_shards)
    sampler = ConversationSampler(shards, seq_len=48, seed=1)
    counted = sum(int((sampler.window(b)[2] != IGNORE).sum()) for b in range(len(sampler)))
    assert counted == sampler.label_tokens > 0  # every assistant label once per epoch
    inputs, labels = sampler.windows(5, 8)
    again = ConversationSampler(shards, seq_len=48, seed=1)
    a, b = again.batch(5, 1, 2, 2, rank=1, world=2), sampler.batch(5, 1, 2, 2, rank=1, world=2)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0]["input_ids"], b[0]["input_ids"])
    assert torch.equal(b[1], labels[6:8])  # rank 1, micro 1 of 2×2×2 windows: windows 6, 7
    # one epoch visits every window once
    seen = [sampler._order(0)[k] for k in range(len(sampler))]
    assert sorted(seen) == list(range(len(sampler)))
    short = ConversationSampler(shards, seq_len=24, seed=1)
    assert short.truncated > 0 and all(int(short.lengths[u]) <= 25 for b in short.bins for u in b)


def test_text_shards_are_not_conversations(tiny_model, docs_jsonl, tmp_path):
    tokenize([docs_jsonl], out=tmp_path / "t", tokenizer=str(tiny_model), workers=1)
    with pytest.raises(UserError, match="not conversations; tokenize them with --format chat"):
        ConversationSampler(TokenShards(tmp_path / "t"), seq_len=32)
    with pytest.raises(UserError, match="--chat-template renders conversations; add --format chat"):
        tokenize([docs_jsonl], out=tmp_path / "u", tokenizer=str(tiny_model), chat_template="chatml")


def _response_ppl(model_dir, shards, seq_len=128):
    from transformers import AutoModelForCausalLM

    from llm4all.evaluate.perplexity import response_perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return response_perplexity(model, ConversationSampler(TokenShards(shards), seq_len, split="validation"))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("extra", [{}, {"lora_rank": 4, "lr": 3e-2}, {"pack": False}])
def test_sft_learns_the_answers_and_reports_their_perplexity(tiny_model, chat_shards, tmp_path, extra):
    """issue 18 item 2: train on conversations lowers the held-out answers' perplexity; the run's
    val_ppl is that perplexity (assistant tokens only) of the saved model."""
    from llm4all.train.command import main as train

    before = _response_ppl(tiny_model, chat_shards)
    assert ConversationSampler(TokenShards(chat_shards), 128, split="validation").truncated == 0
    options = {"seq_len": 128, "micro_batch": 4, "lr": 1e-2, "warmup": 2, "precision": "fp32", "steps": 30,
               **extra}
    result = train(chat_shards, out=tmp_path / "sft", model=str(tiny_model), **options)
    after = _response_ppl(tmp_path / "sft" / "model", chat_shards)
    assert after["ppl"] < 0.9 * before["ppl"], (before, after)
    assert result["val_ppl"] == pytest.approx(after["ppl"], rel=1e-4)
    held_out = TokenShards(chat_shards).index["splits"]["validation"]["assistant_tokens"]
    assert after["tokens"] == held_out  # every held-out answer token, once


def test_sft_refuses_document_orderings(tiny_model, chat_shards, tmp_path):
    from llm4all.train.command import main as train

    with pytest.raises(UserError, match="sampled whole; --mixture order documents"):
        train(chat_shards, out=tmp_path / "x", model=str(tiny_model), mixture=tmp_path / "m.json", steps=1)


@pytest.mark.usefixtures("one_torch_thread")
def test_distillation_on_conversations_counts_the_assistant_tokens_only(tiny_model, chat_shards, tmp_path):
    from llm4all.distill.command import main as distill

    common = {"steps": 3, "seq_len": 64, "micro_batch": 4, "precision": "fp32", "warmup": 1}
    result = distill(chat_shards, out=tmp_path / "kd", teacher=str(tiny_model), mode="online", **common)
    assert result["step"] == 3 and result["val_ppl"] > 1
    with pytest.raises(UserError, match="conversations .* distil with --mode offline, online or self"):
        distill(chat_shards, out=tmp_path / "gkd", teacher=str(tiny_model), mode="on_policy", **common)
    # the KD term is the mean divergence over the answers' positions, not over every position
    from transformers import AutoModelForCausalLM

    from llm4all.distill.args import KDConfig
    from llm4all.distill.losses import kd_and_ce
    from llm4all.distill.step import online_loss
    from tinymodels import build_tiny_model

    student = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    teacher = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "t", seed=7)).eval()
    inputs, labels = ConversationSampler(TokenShards(chat_shards), 64).windows(0, 2)
    with torch.no_grad():
        kd = KDConfig(alpha=1.0)
        _, parts = online_loss(teacher, kd)(student, inputs, labels)
        s_logits, t_logits = (m(**inputs, use_cache=False).logits for m in (student, teacher))
        answers, _ = kd_and_ce(kd.divergence, s_logits[labels != IGNORE], t_logits[labels != IGNORE],
                               temperature=kd.temperature, **kd.kd_options)
        everywhere, _ = kd_and_ce(kd.divergence, s_logits, t_logits, temperature=kd.temperature,
                                  **kd.kd_options)
    assert parts["kd"] == pytest.approx(answers.item(), rel=1e-5)
    assert abs(everywhere.item() - answers.item()) > 1e-3


def test_curate_selects_conversations_lima_style_and_they_tokenize_back(tiny_model, tmp_path):
    """issue 18 item 3: curate --format chat scores and picks conversations (dedup, a length
    bound, LIMA/QDIT on response length and diversity); its kept output is chat input again."""
    from llm4all.curate.pipeline import main as curate
    from llm4all.data.readers import read_documents

    rows = _conversations(40)
    rows.append({**rows[3], "id": "copy-of-c3"})
    path = _write(tmp_path / "chats.jsonl", rows)
    steps = [{"dedup": "exact"}, {"filter": "bounds", "bounds": {"response_words": [4, None]}},
             {"select": "lima", "n": 12, "quality": "response_words", "alpha": 0.5}]
    summary = curate([path], out=tmp_path / "cur", format="chat", signals=["ttr"], steps=steps,
                     lang_id="meta", workers=1)
    assert summary["read"] == 41 and summary["kept"] == 12
    assert summary["removed_by_step"]["dedup:exact"] == {"exact_duplicate": 1}
    kept = list(read_documents(tmp_path / "cur" / "kept.jsonl.zst"))
    words = {r["id"]: sum(len(m["content"].split()) for m in r["messages"] if m["role"] == "assistant")
             for r in rows}
    assert all(words[d.id] >= 4 and d.meta["messages"] for d in kept)
    assert np.mean([words[d.id] for d in kept]) > np.mean(list(words.values()))  # longer answers favoured
    tokenize([tmp_path / "cur" / "kept.jsonl.zst"], out=tmp_path / "tok", tokenizer=str(tiny_model),
             workers=1, format="chat", chat_template="alpaca", val_fraction=0.0)
    assert TokenShards(tmp_path / "tok").index["splits"]["train"]["docs"] == 12
    with pytest.raises(UserError, match="--format must be text or chat"):
        curate([path], out=tmp_path / "bad", format="sharegpt")


def test_eval_perplexity_on_conversations_scores_the_answers(tiny_model, chat_shards, tmp_path):
    from llm4all.evaluate.perplexity import main as eval_perplexity

    result = eval_perplexity(str(tiny_model), chat_shards, context=128, out=tmp_path / "e")
    assert result["scored"] == "assistant tokens"
    assert result["tokens"] == TokenShards(chat_shards).index["splits"]["validation"]["assistant_tokens"]
    assert result["ppl"] == pytest.approx(_response_ppl(tiny_model, chat_shards)["ppl"], rel=1e-5)
    assert json.loads((tmp_path / "e" / "perplexity.json").read_text())["ppl"] == result["ppl"]
    with pytest.raises(UserError, match="use --engine torch"):
        eval_perplexity(str(tiny_model), chat_shards, engine="llama.cpp")


@pytest.mark.usefixtures("one_torch_thread")
def test_offline_teacher_cache_on_conversations_holds_the_packed_windows(tiny_model, chat_shards, tmp_path):
    """The cache's rows are the teacher's top-k on the packed conversation windows (their own
    position ids), its reader gives labels -100 off the answers, and offline KD trains on them."""
    from transformers import AutoModelForCausalLM

    from llm4all.distill.command import main as distill
    from llm4all.distill.teacher_cache import TeacherCache, build_cache, teacher_topk

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    build_cache(teacher, chat_shards, tmp_path / "cache", seq_len=64, top_k=8, dtype="float32", seed=2)
    cache = TeacherCache(tmp_path / "cache")
    sampler = ConversationSampler(TokenShards(chat_shards), 64, seed=2)
    assert cache.index["chat"] and cache.n_windows == len(sampler)
    inputs, labels = cache.tokens([0, 3])
    ids, pos, expected = (np.stack(c) for c in zip(*(sampler.window(int(cache.windows[i])) for i in (0, 3)),
                                                     strict=True))
    assert torch.equal(inputs["input_ids"], torch.from_numpy(ids))
    assert torch.equal(labels, torch.from_numpy(expected))
    t_ids, t_logp, _ = teacher_topk(teacher, torch.from_numpy(ids), 8, None, torch.from_numpy(pos))
    c_ids, c_logp, _ = cache.batch([0, 3])
    assert torch.equal(c_ids, t_ids) and torch.allclose(c_logp, t_logp, atol=2e-3)  # float16 storage
    common = {"steps": 3, "seq_len": 64, "micro_batch": 4, "precision": "fp32", "warmup": 1, "top_k": 8}
    result = distill(chat_shards, out=tmp_path / "kd", teacher=str(tiny_model), mode="offline", **common)
    assert result["step"] == 3 and result["val_ppl"] > 1


def test_response_perplexity_head_on_answers_equals_full_logits(tiny_model, chat_shards):
    """The evaluation runs the output head on the answers' positions only: the same numbers as
    scoring full logits."""
    from transformers import AutoModelForCausalLM

    from llm4all.evaluate.perplexity import response_perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    sampler = ConversationSampler(TokenShards(chat_shards), 128, split="validation")
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, labels in sampler.all_windows(3):
            logits = model(**inputs, use_cache=False).logits
            keep = labels != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    result = response_perplexity(model, sampler, batch_size=3)
    assert result["tokens"] == count and result["nll"] == pytest.approx(total / count, rel=1e-6)


def test_a_cache_whose_shards_were_rebuilt_is_an_error(tiny_model, chat_shards, tmp_path):
    """Cached rows are tied to the shards' windows: re-tokenized shards must not pair them with
    other conversations silently."""
    from transformers import AutoModelForCausalLM

    from llm4all.distill.teacher_cache import TeacherCache, build_cache

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    build_cache(teacher, chat_shards, tmp_path / "cache", seq_len=64, top_k=4, dtype="float32")
    path = _write(tmp_path / "fewer.jsonl", _conversations(30, seed=5))
    tokenize([path], out=chat_shards, tokenizer=str(tiny_model), workers=1, val_fraction=0.2,
             format="chat", chat_template="alpaca")
    with pytest.raises(UserError, match="the cached rows no longer match its windows; rebuild the cache"):
        TeacherCache(tmp_path / "cache").tokens([0])
