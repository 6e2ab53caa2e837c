"""LibriSpeech phone-recognition labels (utt2phones) from a lexicon, on a real-layout fixture."""

from __future__ import annotations

import pytest
from probing_fixtures import LEXICON, make_librispeech_pr

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.prep.common import CorpusProblems
from speechssl.data.prep.librispeech import (
    MissingLexiconError,
    prepare_librispeech_phones,
    read_lexicon,
)
from speechssl.data.tables import read_table


def test_read_lexicon_first_pronunciation_and_stress(tmp_path):
    (tmp_path / "lex").write_text(LEXICON)
    lex, alternatives = read_lexicon(tmp_path / "lex")
    assert lex["A"] == ["AH0"] and alternatives == 1
    assert lex["HELLO"] == ["HH", "AH0", "L", "OW1"]
    lex, _ = read_lexicon(tmp_path / "lex", strip_stress=True)
    assert lex["HELLO"] == ["HH", "AH", "L", "OW"]
    with pytest.raises(MissingLexiconError, match=r"nope\.txt: pronunciation lexicon not found"):
        read_lexicon(tmp_path / "nope.txt")
    (tmp_path / "bad").write_text("HELLO HH AH0\nWORLD\n")
    with pytest.raises(MissingLexiconError, match=r"WORLD \(.*bad:2\): lexicon line has a word"):
        read_lexicon(tmp_path / "bad")


def test_oov_is_an_error_naming_utterance_and_word(tmp_path):
    root = make_librispeech_pr(tmp_path / "corpus")
    with pytest.raises(CorpusProblems) as info:
        prepare_librispeech_phones(root, "dev-clean", tmp_path / "dev", root / "lexicon.txt")
    (problem,) = info.value.problems
    assert problem.kind == "oov"
    assert str(problem) == "174-50561-0001: words not in the lexicon lexicon.txt: ZEBRA"
    assert not (tmp_path / "dev").exists()


def test_skip_oov_writes_valid_dir_and_reports_skips(tmp_path):
    root = make_librispeech_pr(tmp_path / "corpus")
    out = tmp_path / "dev"
    result = prepare_librispeech_phones(
        root, "dev-clean", out, root / "lexicon.txt", skip_oov=True, strip_stress=True
    )
    rep = result.report
    assert (rep.loaded, rep.num_skipped, rep.seen) == (3, 1, 4)
    assert rep.skipped[0][0] == "174-50561-0001" and rep.by_kind() == {"oov": 1}
    assert any("1 alternative pronunciations" in n for n in result.notes)
    assert read_table(out / "utt2phones") == {
        "174-50561-0000": "AH K AE T",
        "84-121123-0000": "HH AH L OW W ER L D",
        "84-121123-0001": "DH AH K AE T S AE T",
    }
    kd = KaldiDataDir(out)
    assert kd.utt_ids() == sorted(read_table(out / "utt2phones"))
    assert kd.text is not None and "174-50561-0001" not in kd.text
    assert main(["data", "validate", str(out)]) == 0


def test_cli_prepare_librispeech_with_lexicon(tmp_path, capsys):
    root = make_librispeech_pr(tmp_path / "corpus")
    base = ["data", "prepare-librispeech", "--corpus-dir", str(root), "--split", "dev-clean"]
    lex = ["--lexicon", str(root / "lexicon.txt")]
    assert main([*base, "--out", str(tmp_path / "a"), *lex]) == 1
    err = capsys.readouterr().err
    assert "error: 174-50561-0001: words not in the lexicon lexicon.txt: ZEBRA" in err
    assert err.rstrip().endswith("add the words to the lexicon or use --skip-oov")
    # the option the error's remedy names works
    phones_txt = tmp_path / "phones.txt"
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "a"),
                *lex,
                "--skip-oov",
                "--phones-txt",
                str(phones_txt),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # every phone of the lexicon (also EY1 of A's second pronunciation), sorted
    assert phones_txt.read_text().split() == sorted(
        ["AH0", "EY1", "K", "AE1", "T", "HH", "L", "OW1", "S", "DH", "W", "ER1", "D"]
    )
    assert f"13 phones -> {phones_txt}" in out
    assert "skipped 174-50561-0001: 174-50561-0001: words not in the lexicon" in out
    assert "3 loaded, 1 skipped (1 oov) of 4" in out
    assert read_table(tmp_path / "a" / "utt2phones")["84-121123-0000"] == "HH AH0 L OW1 W ER1 L D"
    assert main(["data", "validate", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--lexicon", str(tmp_path / "no.txt")]) == 1
    assert "pronunciation lexicon not found" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--skip-oov"]) == 1
    assert "only apply with --lexicon" in capsys.readouterr().err
