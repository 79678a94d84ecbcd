"""E2E NLG Challenge scores, computed as the official scorer computes them.

The official scorer is ``measure_scores.py -p`` from tuetschek/e2e-metrics:

* BLEU and NIST come from its pure-Python port of NIST mteval-v13a (``metrics/pymteval.py``):
  mteval's basic tokenisation, case-insensitive n-grams, corpus-level statistics over
  instances with any number of references.
* METEOR 1.5, ROUGE-L and CIDEr(-D) come from the MS-COCO caption evaluation code, after the
  COCO wrapper of the Stanford PTB tokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``,
  then punctuation tokens dropped).

Everything here is pure Python except METEOR, which runs ``meteor-1.5.jar`` (shipped by the
optional ``pycocoevalcap`` package) under Java.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from peftbench.errors import PeftbenchError, closest

METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")  # order of output

_NO_METEOR = "leave METEOR out with --no-meteor"


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def score_e2e(hypotheses: list[str], references: list[list[str]], metrics=METRICS) -> dict[str, float]:
    """Corpus-level E2E scores of one output per instance against that instance's references.

    Returns the requested metrics (a subset of METRICS) as floats, in METRICS order: BLEU as a
    fraction, NIST, METEOR, ROUGE_L and CIDEr as ``measure_scores.py -p`` prints them.
    """
    wanted = _check_metrics(metrics)
    hypotheses, references = _check_inputs(hypotheses, references)
    if "meteor" in wanted and (why := meteor_available()):
        raise PeftbenchError(why)
    scores = {}
    if "bleu" in wanted:
        scores["bleu"] = _bleu(hypotheses, references)
    if "nist" in wanted:
        scores["nist"] = _nist(hypotheses, references)
    if wanted & {"meteor", "rouge_l", "cider"}:
        # the wrapper's order: hypotheses in instance order, references instance by instance
        hyps = _coco_tokenize_all(hypotheses)
        flat = iter(_coco_tokenize_all([r for group in references for r in group]))
        refs = [[next(flat) for _ in group] for group in references]
        if "meteor" in wanted:
            scores["meteor"] = _meteor(hyps, refs)
        if "rouge_l" in wanted:
            scores["rouge_l"] = _rouge_l(hyps, refs)
        if "cider" in wanted:
            scores["cider"] = _cider(hyps, refs)
    return {name: float(scores[name]) for name in METRICS if name in wanted}


def read_grouped(path) -> list[list[str]]:
    """References in the scorer's text format: one per line, instances separated by blank lines.

    As the official ``read_lines(multi_ref=True)``: lines are stripped, and a file without any
    blank line holds one reference per instance. Runs of blank lines count as one separator.
    """
    groups: list[list[str]] = [[]]
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line:
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:  # no blank lines: a single-reference file
        groups = [[ref] for ref in groups[0]]
    return groups


def meteor_available() -> str | None:
    """None if METEOR can run here, else one line saying what is missing and how to fix it."""
    import shutil

    fixes = []
    if shutil.which("java") is None:
        fixes.append(("a Java runtime", "apt-get install default-jre-headless"))
    if _meteor_jar() is None:
        fixes.append(("the pycocoevalcap package (it ships meteor-1.5.jar)", "pip install 'peftbench[meteor]'"))
    if not fixes:
        return None
    needs = " and ".join(what for what, _ in fixes)
    how = "; ".join(cmd for _, cmd in fixes)
    return f"METEOR needs {needs}: {how} (or {_NO_METEOR})"


def _check_metrics(metrics) -> set[str]:
    """The requested metric names, validated against METRICS."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    wanted = {str(m).lower() for m in metrics}
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        name = unknown[0]
        raise PeftbenchError(f"unknown E2E metric {name!r}{closest(name, METRICS)}; known: {', '.join(METRICS)}")
    if not wanted:
        raise PeftbenchError(f"no E2E metric requested; choose from {', '.join(METRICS)}")
    return wanted


def _check_inputs(hypotheses, references):
    """Lists of str: one hypothesis and a non-empty list of references per instance."""
    hypotheses, references = list(hypotheses), list(references)
    if not all(isinstance(h, str) for h in hypotheses):
        raise PeftbenchError("each system output must be one string (a detokenised text)")
    if any(isinstance(g, str) or not all(isinstance(r, str) for r in g) for g in references):
        raise PeftbenchError("references must be one list of strings per instance, e.g. [[ref1, ref2], [ref1]]")
    references = [list(group) for group in references]
    if len(hypotheses) != len(references):
        raise PeftbenchError(
            f"{len(hypotheses)} system outputs but {len(references)} reference groups: "
            "give one output per instance, in the order of the references")
    if not hypotheses:
        raise PeftbenchError("no instances to score: the outputs and references are empty")
    empty = [i for i, group in enumerate(references) if not group]
    if empty:
        raise PeftbenchError(f"instance {empty[0]} has no reference; every instance needs at least one")
    return hypotheses, references


# ---------------------------------------------------------------------------------------------
# BLEU and NIST: e2e-metrics' metrics/pymteval.py (mteval-v13a, basic tokenisation)
# ---------------------------------------------------------------------------------------------

_MTEVAL_PUNCT = re.compile(r"([{-~\[-` -&(-+:-@/])")  # mteval-v13a's punctuation classes


def _mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a's basic (non-international) tokenisation, as pymteval ports it.

    SGML entities are unescaped, punctuation is split off, periods and commas are split unless
    next to a digit, a dash after a digit is split. The result of ``split(' ')``, so an empty
    text yields one empty token, as in pymteval.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = _MTEVAL_PUNCT.sub(r" \1 ", f" {text} ")
    text = re.sub(r"([^0-9])([.,])", r"\1 \2 ", text)
    text = re.sub(r"([.,])([^0-9])", r" \1 \2", text)
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)
    return re.sub(r"\s+", " ", text).strip().split(" ")


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams of a token list."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _max_ref_counts(refs: list[list[str]], n: int) -> Counter:
    """Per n-gram, its largest count in any one reference (the clipping ceiling)."""
    merged = Counter()
    for ref in refs:
        merged |= _ngram_counts(ref, n)
    return merged


def _clipped_hits(hyp: list[str], refs: list[list[str]], n: int) -> Counter:
    """The hypothesis' n-grams, each counted at most as often as in one reference."""
    return _ngram_counts(hyp, n) & _max_ref_counts(refs, n)


def _lowered_tokens(hypotheses, references):
    """pymteval's view of the data: mteval tokens, lowercased (its scores are case-insensitive)."""
    hyps = [[t.lower() for t in _mteval_tokenize(h)] for h in hypotheses]
    refs = [[[t.lower() for t in _mteval_tokenize(r)] for r in group] for group in references]
    return hyps, refs


def _bleu(hypotheses, references, max_n=4) -> float:
    """Corpus BLEU-4 as pymteval's BLEUScore (mteval-v13a).

    Clipped n-gram hits against all references; per instance the reference closest in length
    (the shorter one on a tie) counts for the brevity penalty. Candidate n-gram totals are
    ``len - n + 1`` per sentence, unclamped, as in pymteval; a zero hit count is floored at
    1e-15 (and a zero total at 1e-9) so that the score stays defined.
    """
    hyps, refs = _lowered_tokens(hypotheses, references)
    hits, totals, ref_len = [0] * max_n, [0] * max_n, 0
    for hyp, group in zip(hyps, refs):
        for n in range(1, max_n + 1):
            hits[n - 1] += sum(_clipped_hits(hyp, group, n).values())
            totals[n - 1] += len(hyp) - n + 1
        ref_len += len(min(group, key=lambda ref: (abs(len(ref) - len(hyp)), len(ref))))
    log_prec = sum(math.log(max(h, 1e-15) / max(t, 1e-9)) for h, t in zip(hits, totals)) / max_n
    hyp_len = totals[0]
    penalty = math.exp(1.0 - ref_len / (hyp_len or 1e-5)) if hyp_len <= ref_len else 1.0
    return penalty * math.exp(log_prec)


def _nist(hypotheses, references, max_n=5) -> float:
    """Corpus NIST-5 as pymteval's NISTScore (mteval-v13a).

    Each clipped hit earns its information weight ``log2(count(w1..wn-1) / count(w1..wn))``,
    counted over all references of the corpus (the empty prefix counts every reference word).
    Per order, the information sum is divided by the hypotheses' n-gram total; the orders are
    summed and multiplied by the length penalty ``exp(-beta * log(min(1, r))**2)``, where r is
    the hypotheses' length over the sum of per-instance average reference lengths and beta makes
    the penalty 0.5 at r = 2/3.
    """
    hyps, refs = _lowered_tokens(hypotheses, references)
    ref_counts = Counter()
    avg_ref_len = 0.0
    for group in refs:
        for ref in group:
            ref_counts[()] += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngram_counts(ref, n))
        avg_ref_len += sum(map(len, group)) / len(group)

    def info(ngram):
        return math.log2(ref_counts[ngram[:-1]] / ref_counts[ngram]) if ngram in ref_counts else 0.0

    score = 0.0
    for n in range(1, max_n + 1):
        gain = sum(info(g) * c for hyp, group in zip(hyps, refs) for g, c in _clipped_hits(hyp, group, n).items())
        total = sum(len(hyp) - n + 1 for hyp in hyps)
        score += gain / total if total else 0.0  # (pymteval divides by zero here)
    ratio = sum(map(len, hyps)) / avg_ref_len
    beta = -math.log(0.5) / math.log(1.5) ** 2
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2)
    return penalty * score


# ---------------------------------------------------------------------------------------------
# PTB tokenisation: the COCO PTBTokenizer wrapper (CoreNLP 3.4.1 PTBTokenizer with
# -preserveLines -lowerCase, then the wrapper's punctuation tokens removed)
# ---------------------------------------------------------------------------------------------

# Tokens the COCO wrapper drops after tokenising. Brackets survive: -lowerCase turns -LRB- into
# -lrb-, which is not on the wrapper's (upper-case) list.
_COCO_PUNCT = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                         ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_L = r"[^\W\d_]"  # a letter
_AN = r"[^\W_]"  # a letter or a digit
_APOS = "['\u2019]"
_WORD = rf"{_L}{_AN}*(?:[.!?]{_L}{_AN}*)*"  # PTBLexer keeps "cheap.It" and "Mr.Smith" whole
_UNDERSCORED = rf"{_L}{_AN}*(?:_+{_AN}+)+"  # foo_bar
_BEFORE_HYPHEN = rf"(?:[A-Za-z](?:\.[A-Za-z])+\.|\d+(?:[.,]\d+)+)(?=-{_AN})"  # U.S.-based, 4,000-strong
_SEG = rf"(?:[dDoOlL]{_APOS}(?={_AN}))?(?:{_BEFORE_HYPHEN}|{_UNDERSCORED}|{_WORD}|\d{_AN}*)"  # o'clock, d'Arcy
_THING = rf"{_SEG}(?:-{_SEG})*"  # hyphenated words and ranges: family-friendly, 20-25
_NUM = r"[-+]?\d*(?:[.:,]\d+)+|[-+]?\d+"

# Abbreviations that keep their period (ABBREV1/ABBREV2 of CoreNLP 3.4.1's PTBLexer, checked
# against its jar), and those that keep it only before a number (ABBREV3).
_ABBREV = (
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec|Mon|Tues?|Wed|Thu|Thurs|Fri"
    "|Ala|Ariz|Ark|Calif|Colo|Conn|Ct|Dak|Del|Fla|Ga|Ill|Ind|Kans?|Ky|La|Mass|Md|Mich|Minn|Miss"
    "|Mo|Mont|Neb|Nev|Okla|Ore|Pa|Penn|Tenn|Tex|Va|Vt|Wash|Wisc?|Wyo"
    "|Inc|Cos?|Corp|Pty|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq"
    "|Jr|Sr|Bros|Ph\\.D|Esq|etc|al|seq|Bldg|Blvd|Rd"
    "|Mr|Mrs|Ms|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt"
    "|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens"
    "|Insp|Mlle|Mme|Msgr|Sfc|Invt|Elec|Natl|Mfg|Mtg|Dept|vs?|Wm|Jos|Cie|cf|Treas"
)
_ABBREV_BEFORE_NUMBER = "ca|figs?|prop|nos?|art|pp|op"
# Capitalised words before which an initial ("plan B. The") gives its period back as the end of a
# sentence.
_SENTENCE_START = ("A|An|As|At|After|But|He|Her|Here|However|If|In|It|Many|More|Now|Once|One|Other|Our"
                   "|She|Since|So|Some|Such|That|The|Their|Then|There|These|They|This|We|What|When|While|Yet|You")

_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
# PTB3 normalisations of single characters: pound sign to #, other currency to $.
_SYMBOLS = {"\u00a3": "#", "\u20ac": "$", "\u00a4": "$", "\u00a2": "cents"}
_FRACTIONS = str.maketrans({"\u00bc": " 1/4 ", "\u00bd": " 1/2 ", "\u00be": " 3/4 ", "\u2153": " 1/3 ",
                            "\u2154": " 2/3 "})
# Characters the lexer drops: zero-width joiners, byte-order mark, soft hyphen, and (as
# untokenizable) some currency signs and anything outside the Basic Multilingual Plane (emoji).
_DROPPED = re.compile("[\u200c\u200d\ufeff\u00ad\u20a9\u20b9\u20bd\U00010000-\U0010ffff]")


def _split_at(cut):
    """A rule action that splits the match into two tokens, ``cut`` characters from its end."""
    return lambda m: [m.group()[:-cut], m.group()[-cut:]]


def _straight(m):
    """The match as one token, a curly apostrophe made straight, as in PTB3 output."""
    return [m.group().replace("\u2019", "'")]


def _quote(opening, closing):
    """A rule action for a quote: opening after a space or an opening bracket, else closing."""
    def action(m):
        before = m.string[m.start() - 1] if m.start() else " "
        return [opening if before.isspace() or before in "([{" else closing]
    return action


# (pattern, action) by priority; the scanner takes the longest match, ties going to the earlier
# rule, as JFlex does. An action maps the match to its tokens (None: the match is the token).
_PTB_RULES = [
    (r"(?i:cannot)", _split_at(3)),
    (r"(?i:gonna|gotta|lemme|gimme|wanna)(?![^\W\d_])", _split_at(2)),
    (rf"{_APOS}(?i:tis|twas)", lambda m: ["'t", m.group()[2:]]),
    (r"<\/?[A-Za-z!?][^>\r\n'.:/]*>", lambda m: [m.group().replace(" ", "\u00a0")]),  # SGML tags
    (r"(?:https?|ftp)://[^\s<>\"]*[^\s<>\".!?,;:&'*)\]}-]", None),
    (r"www\.(?:[^\s.!?,()]+\.)+[A-Za-z]{2,4}(?:/[^\s]*[^\s.!?,;:()])?", None),
    (r"[A-Za-z0-9][^\s\"<>|(){}]*@(?:[^\s\"<>|(){}.]+\.)*[^\s\"<>|(){}\[\].,;:]+", None),  # e-mail
    (r"@[A-Za-z_]\w*|#[A-Za-z]\w*", None),
    (rf"({_L}+)(?i:n{_APOS}t)(?!{_AN})", lambda m: [m.group(1), "n't"]),  # can't -> ca n't
    (rf"{_APOS}(?i:[msd]|re|ve|ll)(?!{_AN})", _straight),  # 's 're 'll
    (rf"[A-HJ-XZn]{_APOS}{_L}{{2,}}|{_L}+[aeiouyAEIOUY]{_APOS}[aeiouA-Z]{_L}*"  # o'clock, shi'ite
     rf"|{_APOS}n{_APOS}|{_APOS}n(?!{_L})|{_APOS}(?i:em|till?|cause)|{_APOS}[2-9]0s", _straight),  # 'n' 'em '90s
    (rf"(?i:th|y){_APOS}(?={_L})", _straight),  # y'all -> y' all
    (r"[A-Z]+(?:&[A-Z]+)+", None),  # AT&T
    (r"(?i:US|HK|NZ|[ACMS])\$(?=\d)", None),  # US$5
    (r"(?i:pro|anti)-", None),
    (rf"(?i:{_ABBREV})\.", None),
    (rf"(?i:{_ABBREV_BEFORE_NUMBER})\.(?=\s*\d)", None),
    (r"[A-Za-z](?:\.[A-Za-z])+\.", None),  # acronyms: U.S., e.g.
    (rf"[A-Za-z]\.(?!\s+(?:{_SENTENCE_START})(?:\s|$))", None),  # initials: J. Smith
    (rf"{_THING}\.(?=[,;:])", None),  # a period before , ; : stays on its word
    (_WORD, None),
    (_UNDERSCORED, None),
    (_THING, None),
    (_NUM, None),
    (rf"{_AN}+(?:-{_AN}+){{0,2}}(?:/{_AN}+(?:-{_AN}+){{0,2}}){{1,2}}", None),  # and/or, 5/5
    (r"(?:\d{1,4}[- ])?\d{1,4}\\?/\d{1,4}", lambda m: [m.group().replace(" ", "\u00a0")]),  # 3 1/2
    (r"&amp;", lambda m: ["&"]),
    (r"&quot;|\"|``|''|\u201c|\u201d", _quote("``", "''")),
    (r"['`\u2018\u2019]", _quote("`", "'")),
    (r"\.{3,}|\u2026", lambda m: ["..."]),
    (r"-{2,4}|[\u2013\u2014]", lambda m: ["--"]),  # longer runs of hyphens stay as they are
    (r"-+|\*+|#+|@+|_+|<<|>>|(?i:c\+\+|[cf]#)", None),
    (r"[?!]+", None),
    (r"\S", lambda m: [_BRACKETS.get(m.group()) or _SYMBOLS.get(m.group()) or m.group()]),
]
_PTB_COMPILED = None


def _ptb_rules():
    """The compiled scanner rules (compiled on first use, to keep the import light)."""
    global _PTB_COMPILED
    if _PTB_COMPILED is None:
        _PTB_COMPILED = [(re.compile(pattern), action) for pattern, action in _PTB_RULES]
    return _PTB_COMPILED


def _ptb_tokens(text: str) -> list[str]:
    """Stanford PTBTokenizer (CoreNLP 3.4.1, PTB3 escaping) of one line, before lowercasing.

    A JFlex-style scanner: at each position the longest rule match wins. It covers what the
    E2E data needs and common English: clitics split (it 's, do n't, ca n't), hyphenated words
    and number ranges kept, a final period split unless the word is a known abbreviation or an
    acronym, brackets escaped (-LRB-), quotes as `` '' ` ', pound sign as #.
    """
    text = _DROPPED.sub("", text).replace("\u200b", " ").translate(_FRACTIONS)
    rules, tokens, pos = _ptb_rules(), [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return tokens
        best, best_action = None, None
        for regex, action in rules:
            m = regex.match(text, pos)
            if m and m.end() > pos and (best is None or m.end() > best.end()):
                best, best_action = m, action
        tokens.extend([best.group()] if best_action is None else best_action(best))
        pos = best.end()


def _coco_tokenize(text: str, next_line: str = "") -> str:
    """What the COCO PTBTokenizer wrapper hands to the scorers for one caption.

    PTB tokens of the text (newlines read as spaces), lowercased, without the wrapper's
    punctuation tokens, joined by single spaces. The wrapper tokenises all captions in one file,
    one a line, and the lexer looks past a line's end: a final letter and period (``20-25 L.``)
    stays one token unless the next line starts with a sentence-start word (``It ...``), as within
    a line; ``next_line`` is that line.
    """
    text = text.replace("\n", " ")
    word = next_line.replace("\n", " ").split(maxsplit=1)[:1]
    extra = word and re.fullmatch(_SENTENCE_START, word[0]) is not None
    tokens = _ptb_tokens(f"{text} {word[0]}" if extra else text)
    if extra:
        tokens = tokens[:-1]  # the next line's word (a sentence-start word is a token of its own)
    lowered = (tok.lower() for tok in tokens)
    return " ".join(tok for tok in lowered if tok not in _COCO_PUNCT)


def _coco_tokenize_all(texts: list[str]) -> list[str]:
    """``_coco_tokenize`` of captions in the order the wrapper writes them to its file."""
    return [_coco_tokenize(t, texts[i + 1] if i + 1 < len(texts) else "") for i, t in enumerate(texts)]


# ---------------------------------------------------------------------------------------------
# ROUGE-L, CIDEr-D, METEOR: MS-COCO caption evaluation (pycocoevalcap) on the tokenised text
# ---------------------------------------------------------------------------------------------


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(hyps: list[str], refs: list[list[str]], beta=1.2) -> float:
    """COCO's ROUGE-L: per instance, F-measure (beta 1.2) of the best LCS precision and the best
    LCS recall over the references (each maximised on its own); the mean over instances."""
    total = 0.0
    for hyp, group in zip(hyps, refs):
        cand = hyp.split(" ")
        lcs = [(_lcs(ref.split(" "), cand), len(ref.split(" "))) for ref in group]
        prec = max(n / len(cand) for n, _ in lcs)
        rec = max(n / ref_len for n, ref_len in lcs)
        if prec and rec:
            total += (1 + beta ** 2) * prec * rec / (rec + beta ** 2 * prec)
    return total / len(hyps)


def _cider_vector(tokens: list[str], log_n_docs: float, doc_freq: Counter, max_n: int):
    """COCO CIDEr's tf-idf vectors per n-gram order, their norms, and the bigram count that it
    uses as the text's length."""
    vecs = [{} for _ in range(max_n)]
    for n in range(1, max_n + 1):
        for ngram, tf in _ngram_counts(tokens, n).items():
            vecs[n - 1][ngram] = tf * (log_n_docs - math.log(max(1.0, doc_freq[ngram])))
    norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]
    return vecs, norms, max(len(tokens) - 1, 0)


def _cider(hyps: list[str], refs: list[list[str]], max_n=4, sigma=6.0) -> float:
    """COCO's CIDEr (the CIDEr-D form): tf-idf cosine per n-gram order (1..4) with the
    hypothesis weights clipped at the reference's, a Gaussian length penalty (sigma 6), averaged
    over orders and references, times 10; the mean over instances. Document frequencies and
    the number of documents come from the scored corpus' own references."""
    doc_freq = Counter()
    tokenized_refs = [[ref.split() for ref in group] for group in refs]
    for group in tokenized_refs:
        doc_freq.update({g for ref in group for n in range(1, max_n + 1) for g in _ngram_counts(ref, n)})
    log_n_docs = math.log(len(refs))
    total = 0.0
    for hyp, group in zip(hyps, tokenized_refs):
        h_vecs, h_norms, h_len = _cider_vector(hyp.split(), log_n_docs, doc_freq, max_n)
        score = 0.0
        for ref in group:
            r_vecs, r_norms, r_len = _cider_vector(ref, log_n_docs, doc_freq, max_n)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma ** 2))
            for hv, rv, hn, rn in zip(h_vecs, r_vecs, h_norms, r_norms):
                dot = sum(min(w, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, w in hv.items())
                score += (dot / (hn * rn) if hn and rn else dot) * penalty
        total += score / max_n / len(group) * 10.0
    return total / len(hyps)


def _meteor_jar() -> Path | None:
    """meteor-1.5.jar from the installed pycocoevalcap package, or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(folder) / "meteor" / "meteor-1.5.jar"
        if jar.is_file() and (jar.parent / "data" / "paraphrase-en.gz").is_file():
            return jar
    return None


def _meteor(hyps: list[str], refs: list[list[str]]) -> float:
    """METEOR 1.5 as the COCO wrapper runs it: ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en
    -norm``; one SCORE line per instance collects its statistics, one EVAL line over all of
    them gives the corpus score (the last line of the reply). Java's output is not shown, and
    the JVM is killed once the score is read."""
    import subprocess

    jar = _meteor_jar()
    cmd = ["java", "-Dfile.encoding=UTF-8", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
    try:
        line = _meteor_exchange(proc, hyps, refs)
    except OSError:  # the JVM went away: a broken pipe
        line = ""
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
    try:
        return float(line)
    except ValueError:
        raise PeftbenchError(f"METEOR (java -jar {jar}) gave no score: check that `java -version` works "
                             f"(or {_NO_METEOR})") from None


def _meteor_exchange(proc, hyps, refs) -> str:
    """Talk to METEOR's -stdio loop; returns its last line, the corpus score."""
    stats = []
    for hyp, group in zip(hyps, refs):
        hyp = hyp.replace("|||", "").replace("  ", " ")
        proc.stdin.write(" ||| ".join(["SCORE", *group, hyp]) + "\n")
        proc.stdin.flush()
        stats.append(proc.stdout.readline().strip())
    proc.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
    proc.stdin.flush()
    for _ in stats:  # the per-instance scores come first
        proc.stdout.readline()
    return proc.stdout.readline().strip()
