"""Where METEOR's WordNet comes from: NLTK's own data (``nltk.download("wordnet")``), else a WordNet
3.0 database folder (Debian's wordnet-base) copied once into NLTK's layout in lorasweep's cache,
with the ``lexnames`` and ``index.sense`` files NLTK reads and that package lacks. NLTK is imported
inside the functions: importing this module costs nothing."""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from common.errors import first_line
from common.paths import cache_root

_LEXNAMES = (  # WordNet 3.0 `lexnames` (lexnames(5WN)): number, name, syntactic category 1-4 (n, v, adj, adv)
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)
_POS = ("noun", "verb", "adj", "adv")
_WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS) + tuple(f"{p}.exc" for p in _POS)
WORDNET_MISSING = ("NLTK's WordNet data is not installed: run `python -m nltk.downloader wordnet` "
                   "or `apt-get install wordnet-base`")


def _default_wordnet_dirs() -> list[str]:
    return [os.environ.get("LORASWEEP_WORDNET_DIR") or "/usr/share/wordnet"]


def _reader(root):
    """A WordNet reader on ``root``, proven to work by one look-up (a broken copy fails here, not in METEOR)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK 3.10's reader maps every synset to "wordnet" (for Open Multilingual Wordnet) when it
            # opens, reading index.sense twice: over half of its ~10 s. METEOR reads English only.
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": English is all METEOR uses
        warnings.simplefilter("ignore")
        reader = EnglishWordNet(root, None)
    if not reader.synsets("dog"):
        raise LookupError(f"WordNet at {root} has no synsets for 'dog'")
    return reader


def _allow_root(root: str) -> None:
    # NLTK 3.10's path sandbox (nltk/pathsec.py) opens files only under the roots on nltk.data.path
    import nltk

    if root not in nltk.data.path:
        nltk.data.path.append(root)


def _nltk_wordnet(nltk_data: list[str] | None):
    import nltk

    for root in nltk_data or ():  # explicit roots must also be sandbox roots to be read
        _allow_root(str(root))
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):  # a downloaded zip is read in place
        try:
            found = nltk.data.find(name, paths=nltk_data)
        except LookupError:
            continue
        return _reader(found), f"NLTK data: {found}"
    return None


_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}  # sense-key numbers; "s": adjective satellite


def _data_synsets(path: Path):
    """(offset, lex_filenum, ss_type, [(lemma, lex_id)], head offset if a satellite) per synset line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        f = line.split(" | ", 1)[0].split()
        n = int(f[3], 16)
        words = [(re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower(), int(f[5 + 2 * i], 16)) for i in range(n)]
        p = 4 + 2 * n
        pointers = [f[p + 1 + 4 * k: p + 5 + 4 * k] for k in range(int(f[p]))]
        head = next((ptr[1] for ptr in pointers if ptr[0] == "&"), None) if f[2] == "s" else None
        yield f[0], int(f[1]), f[2], words, head


def _sense_index(source: Path) -> str:
    """WordNet's ``index.sense`` (sense key, synset offset, sense number, tag count; sorted), rebuilt
    from the database. NLTK 3.10's reader reads it for sense keys; wordnet-base does not ship it. Its
    keys equal NLTK's own ``Lemma.key()`` for all 206,949 senses of WordNet 3.0 (checked once)."""
    order = {}  # (lemma, pos letter, offset) -> sense number: the synset's place in index.<pos>
    for pos in _POS:
        for line in (source / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            f = line.split()
            if f and not line.startswith(" "):
                for number, offset in enumerate(f[len(f) - int(f[2]):], 1):
                    order[f[0], f[1], offset] = number
    counts = {}
    if (source / "cntlist.rev").exists():  # tag counts from the sense-tagged corpora
        counts = dict(line.split()[::2] for line in (source / "cntlist.rev").read_text().splitlines() if line)
    synsets = [s for pos in _POS for s in _data_synsets(source / f"data.{pos}")]
    first_word = {offset: words[0] for offset, _, ss, words, _ in synsets if ss == "a"}
    lines = set()
    for offset, lexfile, ss, words, head in synsets:
        head_word, head_id = (first_word[head][0], f"{first_word[head][1]:02d}") if head else ("", "")
        for lemma, lex_id in words:
            key = f"{lemma}%{_SS_TYPE[ss]}:{lexfile:02d}:{lex_id:02d}:{head_word}:{head_id}"
            number = order.get((lemma, "a" if ss == "s" else ss, offset), 0)
            lines.add(f"{key} {offset} {number} {counts.get(key, 0)}\n")
    return "".join(sorted(lines))


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*_WORDNET_FILES, "lexnames", "index.sense"))


def _build_nltk_copy(source: Path, cache: Path) -> Path:
    """``<cache>/nltk_data/corpora/wordnet``, built once from a WordNet database folder.

    Copied, not symlinked: the sandbox resolves links and refuses targets outside its roots. NLTK's
    reader also opens ``lexnames`` and ``index.sense``, which Debian's wordnet-base does not ship:
    lexnames is the same for every WordNet 3.x, the sense index is rebuilt (~2 s). Written to a temp
    folder and renamed, so a half copy is never used. The folder must be ``corpora/wordnet`` on
    ``nltk.data.path``: NLTK 3.10's reader maps sense keys against that corpus (a start-up mapping
    that ``_reader`` skips, and sense-key look-ups)."""
    target = cache / "nltk_data" / "corpora" / "wordnet"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-wordnet-", dir=target.parent))
    try:
        for name in (*_WORDNET_FILES, "cntlist.rev"):  # cntlist.rev (lemma counts) is optional
            if (source / name).exists():
                shutil.copyfile(source / name, tmp / name)
        (tmp / "index.sense").write_text(_sense_index(source), encoding="utf-8")
        (tmp / "lexnames").write_text("".join(f"{i:02d}\t{line.replace(' ', chr(9))}\n"
                                              for i, line in enumerate(_LEXNAMES)))
        if target.exists() and not _complete(target):  # an older or hand-made partial copy
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its complete copy first
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_wordnet(nltk_data: list[str] | None = None, wordnet_dirs: list[str] | None = None,
                 cache: str | Path | None = None) -> tuple[object | None, str]:
    """(WordNet reader or None, where it came from or why it is missing), searching in order:

    1. ``corpora/wordnet`` (folder or zip) under ``nltk_data`` (default: ``nltk.data.path``), as
       ``nltk.download("wordnet")`` leaves it;
    2. a WordNet 3.0 database folder (``data.noun``, ``index.noun``, ``*.exc``...) from
       ``wordnet_dirs`` (default: ``$LORASWEEP_WORDNET_DIR``, else Debian's ``/usr/share/wordnet``),
       copied once into NLTK's layout under ``cache`` (default ``$LORASWEEP_CACHE`` or
       ``~/.cache/lorasweep``) at ``nltk_data/corpora/wordnet``.

    Tests force "missing" with ``find_wordnet(nltk_data=[], wordnet_dirs=[<empty dir>], cache=<tmp>)``."""
    problems = []
    try:
        found = _nltk_wordnet(nltk_data)
        if found:
            return found
    except Exception as e:  # a corrupt download: say so, and still try the system copy
        problems.append(f"NLTK's WordNet is unreadable ({first_line(e)})")
    cache = Path(cache) if cache is not None else cache_root()
    for folder in (Path(d) for d in (_default_wordnet_dirs() if wordnet_dirs is None else wordnet_dirs)):
        if not all((folder / name).is_file() for name in _WORDNET_FILES):
            continue
        try:
            copy = _build_nltk_copy(folder, cache)
            _allow_root(str(copy.parent.parent))
            return _reader(str(copy)), f"WordNet database {folder}, as NLTK data in {copy}"
        except Exception as e:
            problems.append(f"{folder} could not be used ({first_line(e)})")
    return None, "; ".join([WORDNET_MISSING, *problems])


@functools.cache
def wordnet_status() -> tuple[object | None, str]:
    """:func:`find_wordnet` with its defaults, searched once per process (for METEOR and for logs)."""
    return find_wordnet()
