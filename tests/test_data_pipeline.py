"""The pipeline's filters: decontaminate (real s1K questions, planted overlaps), verify (rejection sampling),
select (s1's rule on a synthetic pool whose answer is known; seeds), stats, and resuming the outputs."""
import json
import os
import random
from collections import Counter

import pytest

from s1fast.data.__main__ import main as data_main
from s1fast.data.pipeline import rows as R
from s1fast.data.pipeline.decontaminate import BUILTIN_EVAL, DuplicateIndex, EvalIndex, decontaminate
from s1fast.data.pipeline.select import s1_diversity, select

ASSETS = os.path.join(os.path.dirname(BUILTIN_EVAL))
S1K = os.path.join(ASSETS, "s1k.json")


def lines(path):
    return [json.loads(x) for x in open(path)]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(*args):
    return data_main([str(a) for a in args])


# ---- decontaminate ---------------------------------------------------------------------------------------
def test_planted_overlaps_are_caught_and_reported_with_the_benchmark_item(tmp_path):
    bench = [r for _, r in R.read(BUILTIN_EVAL)]
    aime = bench[3]["question"]
    shouting = "  ".join(aime.upper().split(" "))                  # changed whitespace and case
    base = "A farmer has 17 sheep and buys 5 more sheep every week for 12 weeks; how many sheep does he own?"
    near = base.replace("buys", "purchases")                      # a near duplicate of an earlier question
    unrelated = "Compute the number of lattice points on the circle x^2 + y^2 = 625."
    data = write(tmp_path / "d.jsonl", [{"question": q, "solution": "1"} for q in (base, shouting, near, unrelated,
                                                                                  base)])
    assert run("decontaminate", "--data", data, "--out", tmp_path / "c.jsonl", "--summary", tmp_path / "s.json") == 0
    kept = [r["question"] for r in lines(tmp_path / "c.jsonl")]
    assert kept == [base, unrelated]
    rep = {r["question"]: r for r in lines(tmp_path / "c.removed.jsonl")}
    assert rep[shouting]["reason"] == "eval_overlap" and rep[shouting]["item"] == bench[3]["source"]
    assert rep[shouting]["benchmark_question"] == aime
    assert rep[shouting]["shared_ngrams"] == rep[shouting]["benchmark_ngrams"]   # every 8-gram survives
    assert rep[near]["reason"] == "duplicate_near" and rep[near]["matched_question"] == base
    assert 0.7 <= rep[near]["similarity"] < 1
    s = json.load(open(tmp_path / "s.json"))
    assert s["dropped"] == {"eval_overlap": 1, "duplicate_near": 1, "duplicate_exact": 1} and s["kept"] == {"clean": 2}
    # user evaluation files are added to the built-in set; --no-builtin-eval leaves only them
    extra = write(tmp_path / "mine.jsonl", [{"problem": unrelated, "answer": "12"}])
    assert run("decontaminate", "--data", data, "--out", tmp_path / "c2.jsonl", "--eval", extra,
               "--no-builtin-eval", "--near-threshold", "2") == 0
    assert [r["question"] for r in lines(tmp_path / "c2.jsonl")] == [base, shouting, near]


def test_an_eight_gram_and_nothing_shorter_is_s1s_rule():
    idx = EvalIndex(8)
    idx.items.append({"item": "b:0", "benchmark_question": "x"})
    bq = "one two three four five six seven eight nine ten"
    idx.grams.append(set())
    from s1fast.data.pipeline.decontaminate import ngrams, words
    idx.grams[0] = ngrams(words(bq), 8)
    for g in idx.grams[0]:
        idx.index[g].append(0)
    assert idx.match("ONE two\tthree four five six seven EIGHT and more") is not None
    assert idx.match("one two three four five six seven nine") is None           # 7 in a row is not enough
    assert idx.match("one two three four five six seven eight", min_overlap=0.5) is None   # 1 of 3 8-grams


def test_samples_of_one_question_are_not_duplicates_of_each_other():
    rows = [(i, {"question": "same question text here", "sample": s}) for i, s in enumerate((0, 1, 2))]
    assert [m for _, m in decontaminate(rows, None, DuplicateIndex())] == [None] * 3


def test_real_s1k_against_the_shipped_eval_sets(tmp_path):
    """Every hit on the real s1K is a shared boilerplate phrase, not a copied problem (bench/RESULTS.md)."""
    assert run("decontaminate", "--data", S1K, "--out", tmp_path / "c.jsonl", "--summary", tmp_path / "s.json") == 0
    s = json.load(open(tmp_path / "s.json"))
    rep = [r for r in lines(tmp_path / "c.removed.jsonl") if r["reason"] == "eval_overlap"]
    assert s["kept"]["clean"] + s["total_dropped"] == 1000 and len(rep) == s["dropped"]["eval_overlap"] > 0
    assert all(r["item"].split(":")[0] in ("aime24", "amc23", "math500") for r in rep)
    assert max(r["shared_ngrams"] / r["benchmark_ngrams"] for r in rep) < 0.5
    top = Counter(r["ngram"] for r in rep).most_common(1)[0][0]
    assert "relatively prime positive integers" in top
    assert s["dropped"]["duplicate_exact"] >= 1 and s["dropped"]["duplicate_near"] >= 1
    # requiring half of a benchmark item's 8-grams leaves no evaluation hit
    assert run("decontaminate", "--data", S1K, "--out", tmp_path / "d.jsonl", "--min-overlap", "0.5",
               "--summary", tmp_path / "s2.json") == 0
    assert "eval_overlap" not in json.load(open(tmp_path / "s2.json"))["dropped"]


# ---- verify ----------------------------------------------------------------------------------------------
def gen_rows():
    out = []
    for q, gold, answers in (("What is 6*7?", "42", ["\\boxed{42}", "\\boxed{41}", "Answer: 42"]),
                             ("What is 1/2+1/4?", "\\frac34", ["\\boxed{0.75}", "\\boxed{3/4}", "no idea"]),
                             ("Name the capital of France, please.", "Paris", ["\\boxed{Lyon}", "\\boxed{Rome}"])):
        for s, a in enumerate(answers):
            out.append({"question": q, "answer": gold, "thinking_trajectories": ["hmm"], "attempt": a, "sample": s,
                        "key": f"{R.qid(q)}:{s}"})
    return out


@pytest.mark.parametrize("keep,k,expect", [("correct", 1, [(0, 0), (0, 2), (1, 0), (1, 1)]),
                                           ("first-k", 1, [(0, 0), (1, 0)]),
                                           ("all", 1, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0),
                                                       (2, 1)])])
def test_verify_rejection_sampling(tmp_path, keep, k, expect):
    rows = gen_rows()
    data = write(tmp_path / "g.jsonl", list(reversed(rows)))
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl", "--keep", keep, "--k", k,
               "--graded", tmp_path / "all.jsonl", "--summary", tmp_path / "s.json") == 0
    qs = ["What is 6*7?", "What is 1/2+1/4?", "Name the capital of France, please."]
    got = sorted((qs.index(r["question"]), r["sample"]) for r in lines(tmp_path / "v.jsonl"))
    assert got == expect
    graded = {(qs.index(r["question"]), r["sample"]): r["verdict"] for r in lines(tmp_path / "all.jsonl")}
    assert graded[(0, 1)] == "wrong" and graded[(1, 2)] == "no_answer" and graded[(1, 0)] == "correct"
    s = json.load(open(tmp_path / "s.json"))
    if keep == "first-k":
        assert s["dropped"] == {"over_k": 2, "wrong": 3, "no_answer": 1}
    # rerunning adds nothing
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl", "--keep", keep, "--k", k) == 0
    assert len(lines(tmp_path / "v.jsonl")) == len(expect)


def test_verify_with_a_named_protocol(tmp_path, capsys):
    """s1's harness compares non-integers as strings: 0.75 is not \\frac34 there, while s1fast's grader says equal."""
    data = write(tmp_path / "g.jsonl", [r for r in gen_rows() if r["question"] == "What is 1/2+1/4?"])
    for proto, expect in (("s1fast", 2), ("s1", 0)):
        assert run("verify", "--data", data, "--out", tmp_path / f"{proto}.jsonl", "--protocol", proto) == 0
        assert len(lines(tmp_path / f"{proto}.jsonl")) == expect
    assert run("verify", "--data", data, "--out", tmp_path / "x.jsonl", "--protocol", "nope") == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err


# ---- select ----------------------------------------------------------------------------------------------
def pool(n_per_domain=(40, 25, 12, 6), seed=0):
    """Synthetic candidates: domain, a hard flag, a distinct trace length."""
    rng = random.Random(seed)
    rows = []
    for d, n in enumerate(n_per_domain):
        for i in range(n):
            rows.append({"question": f"Domain {d} problem number {i}: compute something.", "domain": f"D{d}",
                         "thinking_trajectories": ["x" * rng.randrange(10, 5000)], "attempt": "\\boxed{1}",
                         "hard": i % 3 != 0, "qwen_grade": "No" if i % 3 else "Yes"})
    rows.append({"question": "short", "domain": "D0", "thinking_trajectories": ["y"], "attempt": "1"})
    rows.append({"question": "See the figure below for the triangle and find x.", "domain": "D0",
                 "thinking_trajectories": ["y" * 9999], "attempt": "1"})
    rows.append({"question": "A question whose generation failed entirely.", "domain": "D1",
                 "thinking_trajectories": [""], "attempt": ""})
    return rows


def chars(row):
    return len(R.trace(row))


def test_s1_selection_follows_the_rule(tmp_path):
    rows = pool()
    tally = R.Tally("select")
    chosen = select(rows, "s1", 24, seed=1, domain=lambda r: r["domain"], length=chars, grade_fields=["qwen_grade"],
                    tally=tally)
    d = tally.as_dict()["dropped"]
    assert d["malformed_question_short"] == 1 and d["malformed_question_image"] == 1 and d["failed_generation"] == 1
    assert d["easy"] == sum(1 for r in rows if r.get("hard") is False)
    assert all(r["hard"] for r in chosen) and len(chosen) == 24
    assert select(rows, "s1", 24, seed=1, domain=lambda r: r["domain"], length=chars, grade_fields=["qwen_grade"]) \
        == chosen
    assert select(rows, "s1", 24, seed=2, domain=lambda r: r["domain"], length=chars, grade_fields=["qwen_grade"]) \
        != chosen
    # asking for every hard question takes them all, whatever the seed
    n_hard = sum(1 for r in rows if r.get("hard") is True)
    assert len(select(rows, "s1", 1000, seed=3, domain=lambda r: r["domain"], length=chars,
                      grade_fields=["qwen_grade"])) == n_hard


def test_s1_selection_matches_the_rules_distribution_over_seeds():
    """Four domains of 30 hard questions, 20 chosen: each domain gets 5 on average (uniform domains), and
    inside a domain the longest trace is chosen far more often than a short one (2^-rank)."""
    rows = pool((30, 30, 30, 30))
    for r in rows:
        r["qwen_grade"] = "No"
    per, longest, shortest = Counter(), 0, 0
    by_dom = {}
    for r in rows:
        if r["question"].startswith("Domain"):
            by_dom.setdefault(r["domain"], []).append(r)
    top = {d: max(v, key=chars)["question"] for d, v in by_dom.items()}
    low = {d: min(v, key=chars)["question"] for d, v in by_dom.items()}
    seeds = 150
    for seed in range(seeds):
        chosen = select(rows, "s1", 20, seed, domain=lambda r: r["domain"], length=chars, grade_fields=["qwen_grade"])
        per.update(r["domain"] for r in chosen)
        longest += sum(r["question"] == top[r["domain"]] for r in chosen)
        shortest += sum(r["question"] == low[r["domain"]] for r in chosen)
    for d in ("D0", "D1", "D2", "D3"):
        assert abs(per[d] / seeds - 5) < 0.45, per     # multinomial sd of the mean: ~0.16
    # with ~5 draws per domain the longest trace is almost always taken (P > 0.95); the shortest almost never
    assert longest / (4 * seeds) > 0.9 and shortest / (4 * seeds) < 0.05


def test_inside_a_domain_rank_r_is_drawn_with_probability_2_to_the_minus_r():
    items = list(range(12))                       # already longest first
    counts = Counter(s1_diversity({"a": items}, 1, random.Random(s))[0] for s in range(4000))
    norm = sum(2.0 ** -(r + 1) for r in range(12))
    for r in range(4):
        p = 2.0 ** -(r + 1) / norm
        assert abs(counts[r] / 4000 - p) < 4 * (p * (1 - p) / 4000) ** 0.5, (r, counts[r])
    # domains uniformly: two domains of very different sizes get picked equally often on the first draw
    first = Counter(s1_diversity({"big": list(range(50)), "small": ["s"]}, 1, random.Random(s))[0] == "s"
                    for s in range(2000))
    assert abs(first[True] / 2000 - 0.5) < 0.05


def test_simple_alternatives_and_the_cli(tmp_path):
    rows = pool()
    by_len = select(rows, "length", 5, 0, domain=lambda r: "x", length=chars)
    lens = sorted((chars(r) for r in rows if r["question"] != "short"), reverse=True)
    assert [chars(r) for r in by_len] == lens[:5]
    rnd = select(rows, "random", 10, 3, domain=lambda r: "x", length=chars)
    assert len({r["question"] for r in rnd}) == 10 and rnd == select(rows, "random", 10, 3, domain=lambda r: "x",
                                                                     length=chars)
    hard = select(rows, "difficulty", 200, 0, domain=lambda r: "x", length=chars, grade_fields=["qwen_grade"])
    assert len(hard) == sum(1 for r in rows if r.get("hard") is True)
    data = write(tmp_path / "p.jsonl", rows)
    out = tmp_path / "sel.jsonl"
    for _ in range(2):   # the second run (same seed) finds everything already there
        assert run("select", "--data", data, "--out", out, "--size", 10, "--grade-field", "qwen_grade",
                   "--length", "chars",
                   "--seed", 5, "--summary", tmp_path / "s.json") == 0
    sel = lines(out)
    assert len(sel) == 10 and len({r["key"] for r in sel}) == 10
    assert json.load(open(tmp_path / "s.json"))["other"]["already_done"] == 10
    assert run("select", "--data", data, "--out", tmp_path / "x.jsonl", "--method", "difficulty",
               "--length", "chars") == 2


def test_a_named_classifier_gives_the_domains(tmp_path, monkeypatch):
    (tmp_path / "myclass.py").write_text("def by_number(row):\n"
                                         "    return 'even' if '0' in row['question'] else 'odd'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write(tmp_path / "p.jsonl", pool())
    assert run("select", "--data", data, "--out", tmp_path / "s.jsonl", "--size", 6, "--length", "chars",
               "--domain-fn", "myclass:by_number") == 0
    assert {r["domain"] for r in lines(tmp_path / "s.jsonl")} == {"even", "odd"}


# ---- stats -----------------------------------------------------------------------------------------------
def test_stats_on_real_traces(tmp_path):
    rows = [r for _, r in R.read(os.path.join(ASSETS, "sample_s1k.jsonl"))][:12]
    data = write(tmp_path / "d.jsonl", rows + [{"conversations": [{"from": "human", "value": "2+2?"},
                                                                  {"from": "gpt", "value": "4"}]}])
    out = tmp_path / "st"
    assert run("stats", "--data", data, "--out", out, "--recipe", "s1") == 0
    st = json.load(open(out / "stats.json"))
    assert st["rows"] == 13 and st["questions"] == len({r["question"] for r in rows}) + 1
    assert st["rows_not_renderable"] == 1          # the ShareGPT row has no s1 rendering
    from s1fast.data import load_tokenizer, render
    tok = load_tokenizer()
    assert st["lengths"]["sequence"]["max"] == max(len(tok(render(r, "s1"))["input_ids"]) for r in rows)
    assert st["lengths"]["trace"]["n"] == 13 and st["lengths"]["sequence"]["n"] == 12
    assert sum(v["rows"] for v in st["by_source"].values()) == 13 and len(st["by_source"]) >= 2
    assert (out / "lengths.png").stat().st_size > 10000 and "| trace |" in (out / "stats.md").read_text()


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"problem": f"Parquet question number {i} about integers.", "solution": str(i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows + rows[:1]), tmp_path / "d.parquet")
    assert run("decontaminate", "--data", tmp_path / "d.parquet", "--out", tmp_path / "c.jsonl",
               "--near-threshold", "2") == 0
    assert [r["problem"] for r in lines(tmp_path / "c.jsonl")] == [r["problem"] for r in rows]


def test_outputs_must_be_jsonl_and_bad_input_fails_clearly(tmp_path, capsys):
    assert run("select", "--data", S1K, "--out", tmp_path / "x.parquet") == 2
    assert "error: select:" in capsys.readouterr().err
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    assert run("decontaminate", "--data", bad, "--out", tmp_path / "o.jsonl") == 2
    assert "row 2" in capsys.readouterr().err  # 1-based: the second line is the bad one


# ---- a JSON-lines file with no newline after its last row ---------------------------------------------------
def test_a_last_row_without_a_final_newline_is_read_not_dropped(tmp_path, capsys):
    """Many tools end a .jsonl without a final newline: that row is complete and kept, not taken for a line
    cut by a kill; a truly cut line is still skipped, with the rows numbered from 1 as everywhere."""
    rows = [{"question": f"What is {i} + {i}, in words, please?", "answer": str(2 * i)} for i in range(3)]
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))            # no "\n" at the end
    assert [r for _, r in R.read(str(data))] == rows
    assert "partial" not in capsys.readouterr().err
    assert run("decontaminate", "--data", data, "--out", tmp_path / "c.jsonl", "--no-builtin-eval") == 0
    assert [r["question"] for r in lines(tmp_path / "c.jsonl")] == [r["question"] for r in rows]
    cut = tmp_path / "cut.jsonl"
    cut.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n" + '{"question": "half a li')
    assert [(i, r) for i, r in R.read(str(cut))] == [(1, rows[0]), (2, rows[1])]
    assert "partial last line" in capsys.readouterr().err
    blanks = tmp_path / "blanks.jsonl"                                 # trailing blanks: nothing was cut
    blanks.write_text(json.dumps(rows[0]) + "\n  ")
    assert [r for _, r in R.read(str(blanks))] == rows[:1] and "partial" not in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"                                       # a cut file's other lines are still checked
    bad.write_text(json.dumps(rows[0]) + "\n[1, 2]\n" + '{"question": "half')
    with pytest.raises(R.DataError, match="row 2: expected a JSON object"):
        list(R.read(str(bad)))


def test_an_output_whose_last_row_has_no_newline_keeps_it_and_appends_after_it(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"key": "a", "x": 1}))                   # complete, but no newline
    with R.Output(str(out)) as o:
        assert o.keys == {"a"} and o.rows == 1
        o.write({"key": "b", "x": 2})
    assert lines(out) == [{"key": "a", "x": 1}, {"key": "b", "x": 2}]
    out.write_text(json.dumps({"key": "a"}) + "\n" + '{"key": "b", "x')   # cut by a kill: dropped, redone
    with R.Output(str(out)) as o:
        assert o.keys == {"a"}
    assert lines(out) == [{"key": "a"}] and "dropping a partial last line" in capsys.readouterr().err


def test_stats_on_an_empty_file_or_rows_without_a_question_says_so_instead_of_crashing(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run("stats", "--data", empty, "--out", tmp_path / "st") == 2
    err = capsys.readouterr().err
    assert "error: stats: file" in err and "empty.jsonl" in err and "holds no rows" in err
    noq = write(tmp_path / "noq.jsonl", [{"text": "no question here"}, {"id": 3}])
    assert run("stats", "--data", noq, "--out", tmp_path / "st2") == 0
    st = json.load(open(tmp_path / "st2" / "stats.json"))
    assert st["rows"] == 2 and st["rows_without_question"] == 2 and st["questions"] == 0
    assert (tmp_path / "st2" / "lengths.png").stat().st_size > 1000
    assert run("stats", "--data", noq, "--out", empty) == 2      # --out naming a file: 'File exists' before
    assert "empty.jsonl: is a file; --out takes a folder" in capsys.readouterr().err


def test_a_rerun_with_other_options_refuses_to_mix_its_rows_into_the_earlier_output(tmp_path, capsys):
    """select --size 10 then --size 4 (or another seed) into the same --out used to append: a 14-row file
    where 4 were asked for; so did decontaminate with a stricter threshold. Now: an error naming the file."""
    data = write(tmp_path / "p.jsonl", pool())
    out = tmp_path / "sel.jsonl"
    sel = ["select", "--data", data, "--out", out, "--length", "chars", "--method", "random"]
    assert run(*sel, "--size", 10) == 0 and len(lines(out)) == 10
    with open(out) as f:
        head = f.readline()
    out.write_text(head)                                       # a run stopped after one row: resumed as before
    assert run(*sel, "--size", 10) == 0 and len(lines(out)) == 10
    capsys.readouterr()
    for other in (["--size", 4], ["--size", 10, "--seed", 1]):
        assert run(*sel, *other) == 2 and len(lines(out)) == 10
        err = capsys.readouterr().err
        assert "error: select: file" in err and "sel.jsonl: already holds" in err and "delete the file" in err
    qs = write(tmp_path / "q.jsonl", [{"question": f"Find the value of x when {i} x = {2 * i} holds."}
                                      for i in range(1, 6)] + [{"question": "Find the value of x when 1 x = 2 holds!"}])
    clean = tmp_path / "clean.jsonl"
    dec = ["decontaminate", "--data", qs, "--out", clean, "--no-builtin-eval"]
    assert run(*dec, "--no-dedup") == 0 and len(lines(clean)) == 6
    assert run(*dec) == 2 and len(lines(clean)) == 6           # dedup would drop the last row, already written
    assert "already holds 1 row(s) that this run does not keep" in capsys.readouterr().err


def test_verify_rerun_with_another_keep_rule_refuses_to_mix_rows(tmp_path, capsys):
    """verify --keep all, then --keep correct into the same --out said 'kept 0, already_done 8' and left the
    wrong samples in the file; a stopped run with the same rule still resumes."""
    data = write(tmp_path / "g.jsonl", gen_rows())
    out = tmp_path / "v.jsonl"
    assert run("verify", "--data", data, "--out", out, "--keep", "correct") == 0
    assert len(lines(out)) == 4
    with open(out) as f:
        head = f.readline()
    out.write_text(head)                                                # stopped after one row
    assert run("verify", "--data", data, "--out", out, "--keep", "correct") == 0 and len(lines(out)) == 4
    assert run("verify", "--data", data, "--out", out, "--keep", "first-k", "--k", 1) == 2
    assert "one more sample of a question than --k 1" in capsys.readouterr().err
    out2 = tmp_path / "v2.jsonl"
    assert run("verify", "--data", data, "--out", out2, "--keep", "all") == 0 and len(lines(out2)) == 8
    assert run("verify", "--data", data, "--out", out2, "--keep", "correct") == 2
    err = capsys.readouterr().err
    assert "error: verify: file" in err and "which --keep correct does not keep" in err and "delete the file" in err
    other = write(tmp_path / "o.jsonl", gen_rows()[:3])
    assert run("verify", "--data", other, "--out", out2, "--keep", "all") == 2
    assert "is not a sample of --data" in capsys.readouterr().err
    assert len(lines(out2)) == 8


def test_a_domain_classifier_that_is_missing_or_fails_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "mydom.py").write_text("def by_field(row):\n    return row['msc']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write(tmp_path / "p.jsonl", pool()[:20])
    for fn, want in (("mydom:nope", "--domain-fn 'mydom:nope': module 'mydom' has no 'nope'"),
                     ("nomodule_xyz:f", "cannot import 'nomodule_xyz'"),
                     ("mydom:by_field", "--domain-fn 'mydom:by_field' failed on the row with question")):
        assert run("select", "--data", data, "--out", tmp_path / "s.jsonl", "--length", "chars",
                   "--domain-fn", fn) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err
    assert "KeyError: 'msc'" in err


def test_verify_with_an_answer_field_no_row_has_says_so(tmp_path, capsys):
    """A misspelt --answer-field graded nothing ('no_reference' for every row) and exited 0."""
    data = write(tmp_path / "g.jsonl", gen_rows())
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl", "--answer-field", "gold") == 2
    err = capsys.readouterr().err
    assert "no row has the field 'gold' named by --answer-field" in err and "answer, attempt" in err
    assert not os.path.exists(tmp_path / "v.jsonl") or not lines(tmp_path / "v.jsonl")
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl", "--answer-field", "answer") == 0
    assert len(lines(tmp_path / "v.jsonl")) == 4


def test_a_reference_file_without_grades_is_refused_not_read_as_every_question_easy(tmp_path, capsys):
    """select --reference-graded with an ungraded file (generate's output, not verify --graded's) read every
    question as solved by that model: 'dropped: easy N', nothing chosen, exit 0. An --eval or reference file
    that does not exist was blamed on --data."""
    rows = [{"question": f"Hard question number {i} about primes?", "thinking_trajectories": ["t" * (10 + i)],
             "attempt": "x", "domain": "d"} for i in range(4)]
    data = write(tmp_path / "c.jsonl", rows)
    ungraded = write(tmp_path / "gen.jsonl", rows)
    sel = ["select", "--data", data, "--out", tmp_path / "s.jsonl", "--length", "chars"]
    assert run(*sel, "--reference-graded", ungraded) == 2
    err = capsys.readouterr().err
    assert "gen.jsonl: --reference-graded: no row has a 'correct' grade" in err and "verify --graded" in err
    graded = write(tmp_path / "g.jsonl", [{**rows[0], "correct": False}, {**rows[1], "correct": True},
                                          {**rows[2], "correct": None}, {**rows[3], "correct": False},
                                          {**rows[3], "correct": None}])
    assert run(*sel, "--reference-graded", graded, "--summary", tmp_path / "s.json") == 0
    assert sorted(r["question"] for r in lines(tmp_path / "s.jsonl")) == [rows[0]["question"], rows[3]["question"]]
    assert json.load(open(tmp_path / "s.json"))["dropped"] == {"easy": 1, "difficulty_no_attempt": 1, "not_chosen": 0}
    assert run(*sel, "--reference-graded", tmp_path / "nope.jsonl") == 2
    assert "nope.jsonl: no such file; --reference-graded takes" in capsys.readouterr().err
    assert run("decontaminate", "--data", data, "--out", tmp_path / "d.jsonl", "--eval", tmp_path / "b.jsonl") == 2
    assert "b.jsonl: no such file; --eval takes" in capsys.readouterr().err
    answers = write(tmp_path / "answers.jsonl", [{"id": 1, "gt": "42"}])   # an --eval file with no question
    assert run("decontaminate", "--data", data, "--out", tmp_path / "d.jsonl", "--eval", answers) == 2
    assert "answers.jsonl: --eval: no row has a question" in capsys.readouterr().err


def test_a_summary_in_a_new_folder_is_written_and_an_unwritable_one_is_one_error_line(tmp_path, capsys):
    """--summary sub/dir/s.json ended a finished step with a FileNotFoundError traceback."""
    data = write(tmp_path / "q.jsonl", [{"question": "What is the sum of the first ten primes?"}])
    assert run("decontaminate", "--data", data, "--out", tmp_path / "c.jsonl", "--no-builtin-eval",
               "--summary", tmp_path / "sub" / "dir" / "s.json") == 0
    assert json.load(open(tmp_path / "sub" / "dir" / "s.json"))["kept"] == {"clean": 1}
    (tmp_path / "f").write_text("")
    assert run("decontaminate", "--data", data, "--out", tmp_path / "c.jsonl", "--no-builtin-eval",
               "--summary", tmp_path / "f" / "s.json") == 2
    err = capsys.readouterr().err
    assert "error: decontaminate: cannot write --summary" in err and "Traceback" not in err


def test_stats_and_select_show_progress_while_tokenising(tmp_path, capsys):
    """Both tokenise every trace (minutes on a 59K-row pool) and showed nothing until done."""
    data = write(tmp_path / "d.jsonl", [r for _, r in R.read(os.path.join(ASSETS, "sample_s1k.jsonl"))][:3])
    assert run("stats", "--data", data, "--out", tmp_path / "st") == 0
    assert "counting tokens: 100%" in capsys.readouterr().err
    assert run("select", "--data", data, "--out", tmp_path / "s.jsonl", "--size", 2) == 0
    assert "measuring traces: 100%" in capsys.readouterr().err
    assert run("stats", "--data", data, "--out", tmp_path / "st", "--no-progress") == 0
    assert run("select", "--data", data, "--out", tmp_path / "s2.jsonl", "--size", 2, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "counting tokens" not in err and "measuring traces" not in err


def test_an_output_naming_the_input_file_is_refused(tmp_path, capsys):
    """decontaminate --data c.jsonl --out c.jsonl reported 'already_done' for every row; verify blamed 'other
    options'; the input file was the one appended to."""
    data = write(tmp_path / "c.jsonl", gen_rows())
    before = open(data).read()
    assert run("decontaminate", "--data", data, "--out", data) == 2
    assert "--data and --out name the same file" in capsys.readouterr().err
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl", "--graded", tmp_path / "v.jsonl") == 2
    assert "--out and --graded name the same file" in capsys.readouterr().err
    assert open(data).read() == before and not (tmp_path / "v.jsonl").exists()


def test_a_lone_surrogate_escape_in_a_row_is_carried_not_a_crash(tmp_path):
    """'\\ud83d' alone is valid JSON (scraped data has it); every step failed on it with "'utf-8' codec can't
    encode character '\\ud83d'", naming no row."""
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "What is \\ud83d alone, and what is 2+2?", "answer": "4"}\n'
                    '{"question": "A plain question about the number 17?", "answer": "17"}\n')
    out = tmp_path / "c.jsonl"
    assert run("decontaminate", "--data", data, "--out", out, "--no-builtin-eval") == 0
    assert [r["question"] for r in lines(out)] == [r["question"] for _, r in R.read(str(data))]
    assert lines(out)[0]["question"] == "What is \ud83d alone, and what is 2+2?"
    assert run("decontaminate", "--data", data, "--out", out, "--no-builtin-eval") == 0 and len(lines(out)) == 2


def test_a_lone_surrogate_is_counted_by_stats_and_named_by_prepare(tmp_path, capsys):
    """The tokenizer refuses such text: stats and prepare ended in a TypeError traceback."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 2+2?", "thinking_trajectories": ["hmm"], "attempt": "4"}\n'
                    '{"question": "What is \\ud83d?", "thinking_trajectories": ["hmm"], "attempt": "4"}\n')
    assert run("stats", "--data", data, "--out", tmp_path / "st", "--recipe", "s1", "--no-progress") == 0
    assert json.load(open(tmp_path / "st" / "stats.json"))["lengths"]["sequence"]["n"] == 2
    capsys.readouterr()
    assert run("prepare", "--data", data, "--out", tmp_path / "tk", "--no-progress", "--workers", 1) == 2
    assert "row 2: the text holds a lone surrogate (\\ud83d in the JSON)" in capsys.readouterr().err


def test_s1_selection_says_when_no_row_names_a_domain(tmp_path, capsys):
    """Without a domain field every row fell in 'unknown' and the diversity draw had one domain, silently."""
    rows = [{"question": f"Question {i}: how many primes are below {10 * i}?", "thinking_trajectories": ["t" * i],
             "attempt": "x", "subject": ""} for i in range(1, 6)]
    data = write(tmp_path / "p.jsonl", rows)
    assert run("select", "--data", data, "--out", tmp_path / "s.jsonl", "--size", 3, "--length", "chars",
               "--summary", tmp_path / "s.json") == 0
    assert "no row names a domain" in capsys.readouterr().err
    assert json.load(open(tmp_path / "s.json"))["other"]["domains"] == 1
    data = write(tmp_path / "p2.jsonl", [dict(r, subject=f"s{i % 2}") for i, r in enumerate(rows)])
    assert run("select", "--data", data, "--out", tmp_path / "s2.jsonl", "--size", 3, "--length", "chars",
               "--summary", tmp_path / "s.json") == 0
    assert "no row names a domain" not in capsys.readouterr().err
    assert json.load(open(tmp_path / "s.json"))["other"]["domains"] == 2


def test_resuming_reads_a_large_output_without_loading_it_whole(tmp_path):
    """Checking the last line read the whole file into memory, on every step's start and every read: a resumed
    generate at s1's scale (59K questions x samples x long traces: gigabytes) held all of it at once. A last
    line longer than the 64 KiB block read backwards from the end is found all the same."""
    import tracemalloc
    trace = "x" * 20_000
    rows = [{"key": f"k{i}", "question": f"q{i}", "thinking_trajectories": [trace]} for i in range(600)]
    out = tmp_path / "gen.jsonl"
    body = "".join(json.dumps(r) + "\n" for r in rows)
    for tail in ("", json.dumps({"key": "last", "t": "y" * 150_000})[:-10]):   # whole; cut in a long line
        out.write_text(body + tail)
        size = out.stat().st_size
        tracemalloc.start()
        n = sum(1 for _ in R.read(str(out)))
        with R.Output(str(out)) as o:
            assert len(o.keys) == 600
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == 600 and out.stat().st_size == len(body.encode()) and peak < size / 4, (peak, size)


def test_verify_on_rows_with_no_answer_to_grade_says_so(tmp_path, capsys):
    """A file whose answers are in fields s1fast does not read was graded 'no_answer' row by row, exit 0.
    (SkyThought's harness rows, answers in 'code', were such a file; they are read now: test_data_skythought.)"""
    data = write(tmp_path / "other.jsonl", [{"question": "What is 6*7?", "gt": "42", "output": "... \\boxed{42}"}])
    assert run("verify", "--data", data, "--out", tmp_path / "v.jsonl") == 2
    err = capsys.readouterr().err
    assert "no row has an answer to grade" in err and "the first row has: gt, key, output," in err


def test_stats_without_matplotlib_writes_its_numbers_and_skips_the_plot(tmp_path, monkeypatch, capsys):
    """It was 'error: stats: No module named matplotlib', exit 2, nothing written (matplotlib is optional)."""
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    data = write(tmp_path / "d.jsonl", [{"question": "2+2?", "attempt": "4"}])
    assert run("stats", "--data", data, "--out", tmp_path / "st") == 0
    assert "lengths.png skipped: matplotlib is not installed" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "st")) == ["stats.json", "stats.md"]
