"""``speechssl data prepare-librispeech | prepare-librilight | prepare-speech-commands |
prepare-voxceleb1``: real corpora -> data dirs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "prepare-librispeech",
        help="LibriSpeech split -> validated data dir (text, utt2spk, utt2dur, spk2gender)",
        description=(
            "Prepare one LibriSpeech split from its real layout "
            "ROOT/LibriSpeech/<split>/<spk>/<chapter>/*.flac + <spk>-<chapter>.trans.txt "
            "(ROOT may also be the LibriSpeech folder itself). A transcript line without "
            "flac or a flac without transcript line is an error naming it (--tolerant: "
            "skipped and counted)."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="LibriSpeech or its parent")
    p.add_argument("--split", required=True, metavar="NAME", help="e.g. train-clean-100, dev-clean")
    p.add_argument("--out", required=True, metavar="DIR", help="data dir to write")
    p.add_argument("--tolerant", action="store_true", help="skip and count bad utterances")
    p.add_argument(
        "--per-chapter-speakers",
        action="store_true",
        help="speaker = <reader>-<chapter> (Kaldi recipe style) instead of the reader",
    )
    p.add_argument(
        "--lexicon",
        metavar="FILE",
        help="also write utt2phones (phone recognition labels) from this pronunciation "
        "lexicon, LibriSpeech format 'WORD PH1 PH2 ...' (e.g. librispeech-lexicon.txt)",
    )
    p.add_argument(
        "--strip-stress",
        action="store_true",
        help="with --lexicon: drop stress digits (AH0/AH1/AH2 -> AH)",
    )
    p.add_argument(
        "--skip-oov",
        action="store_true",
        help="with --lexicon: leave out (and report) utterances with words not in the lexicon",
    )
    p.add_argument(
        "--phones-txt",
        metavar="FILE",
        help="with --lexicon: also write the lexicon's phone inventory, one symbol a line "
        "(e.g. the PR task root's phones.txt)",
    )
    p.set_defaults(func=_librispeech)

    p = verbs.add_parser(
        "prepare-librilight",
        help="Libri-Light subset -> validated data dir (no text), optionally segmented",
        description=(
            "Prepare a Libri-Light subset from its real layout "
            "ROOT/<subset>/<speaker>/<book>/<file>.flac + <file>.json. With --max-segment, "
            "recordings are cut into segments of at most that many seconds, packing the "
            "metadata's voice-activity regions (or cutting evenly without them)."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="folder holding the subsets")
    p.add_argument("--subset", required=True, metavar="NAME", help="small, medium, large, ...")
    p.add_argument("--out", required=True, metavar="DIR", help="data dir to write")
    p.add_argument(
        "--max-segment", type=float, default=None, metavar="SECONDS", help="cut into segments"
    )
    p.add_argument("--tolerant", action="store_true", help="skip and count bad files")
    p.set_defaults(func=_librilight)

    add_probing_verbs(verbs)


def add_probing_verbs(verbs: argparse._SubParsersAction) -> None:
    """Real corpora of the SUPERB-like probing tasks (KS, SID, ASV)."""
    p = verbs.add_parser(
        "prepare-speech-commands",
        help="Speech Commands v0.01 -> keyword-spotting dirs OUT/{train,dev,test} (utt2keyword)",
        description=(
            "Prepare SUPERB keyword spotting from Speech Commands v0.01's real layout "
            "ROOT/<word>/<hash>_nohash_<n>.wav, ROOT/validation_list.txt, "
            "ROOT/testing_list.txt, ROOT/_background_noise_/*.wav. Classes: yes no up down "
            "left right on off stop go, _unknown_ (every other word) and _silence_ (clips cut "
            "from the background noise). With --test-set-dir the test dir is the separate "
            "speech_commands_test_set_v0.01 (<label>/*.wav), as in SUPERB."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="the v0.01 training archive")
    p.add_argument(
        "--test-set-dir", metavar="DIR", help="speech_commands_test_set_v0.01 (SUPERB's test set)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{train,dev,test}")
    p.add_argument(
        "--silence-seconds",
        type=float,
        default=1.0,
        metavar="S",
        help="length of the _silence_ clips cut from the background noise (default 1.0)",
    )
    p.add_argument("--tolerant", action="store_true", help="skip and count bad clips")
    p.set_defaults(func=_speech_commands)

    p = verbs.add_parser(
        "prepare-voxceleb1",
        help="VoxCeleb1 -> speaker identification (sid) or verification (asv) dirs",
        description=(
            "Prepare SUPERB SID or ASV from VoxCeleb1's real layout "
            "ROOT/wav/id*/<video>/<n>.wav (or vox1_dev_wav/wav + vox1_test_wav/wav). "
            "sid: OUT/{train,dev,test} from iden_split.txt (1/2/3). asv: OUT/test holds the "
            "utterances of veri_test.txt and a Kaldi 'trials' file; OUT/train the speakers "
            "no trial names; OUT/dev --dev-speakers of those held out, with seeded trials."
        ),
    )
    p.add_argument("--task", required=True, choices=["sid", "asv"], help="which task's dirs")
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="VoxCeleb1 root")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{train,dev,test}")
    p.add_argument(
        "--list",
        metavar="FILE",
        help="split list (sid, default ROOT/iden_split.txt) or trial list "
        "(asv, default ROOT/veri_test.txt; e.g. veri_test2.txt)",
    )
    p.add_argument(
        "--dev-speakers",
        type=int,
        default=None,
        metavar="N",
        help="asv: training speakers held out for dev trials (default 20; 0 = no dev dir)",
    )
    p.add_argument("--tolerant", action="store_true", help="skip and count bad files")
    p.set_defaults(func=_voxceleb1)

    p = verbs.add_parser(
        "prepare-fluent-speech-commands",
        help="Fluent Speech Commands -> intent-classification dirs OUT/{train,dev,test} "
        "(utt2intent)",
        description=(
            "Prepare SUPERB intent classification from Fluent Speech Commands' real layout "
            "ROOT/wavs/speakers/<spk>/<file>.wav and ROOT/data/{train,valid,test}_data.csv "
            "(columns path,speakerId,transcription,action,object,location; valid -> dev). "
            "utt2intent holds <action>|<object>|<location>."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="fluent_speech_commands")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{train,dev,test}")
    p.add_argument("--tolerant", action="store_true", help="skip and count bad rows")
    p.set_defaults(func=_fluent_speech_commands)

    p = verbs.add_parser(
        "prepare-iemocap",
        help="IEMOCAP -> emotion-recognition fold roots OUT/fold{1..5}/{train,dev,test} "
        "(utt2emotion)",
        description=(
            "Prepare SUPERB emotion recognition from IEMOCAP's real layout "
            "ROOT/Session{1..5}/sentences/wav/<dialog>/<utt>.wav and "
            "ROOT/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt. Four classes: neu, hap "
            "(exc merged in), ang, sad; the other labels are left out by the task definition "
            "and counted per label. Fold k: test = Session k, train/dev = the other "
            "sessions (a seeded random --dev-ratio to dev). Train one probe per fold root and "
            "average with 'speechssl probe folds'."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="IEMOCAP_full_release")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/fold{1..5}/...")
    p.add_argument(
        "--dev-ratio", type=float, default=0.2, help="share of the training sessions for dev"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/dev split")
    p.add_argument("--tolerant", action="store_true", help="skip and count bad utterances")
    p.set_defaults(func=_iemocap)

    p = verbs.add_parser(
        "prepare-snips",
        help="Audio SNIPS -> slot-filling dirs OUT/{train,dev,test} (utt2slots) + slots.txt",
        description=(
            "Prepare SUPERB slot filling from the Audio SNIPS layout SUPERB uses: "
            "ROOT/all.iob.snips.txt ('<spk>-snips-<split>-<n> BOS words EOS<TAB>O tags "
            "intent'), ROOT/slots.txt and ROOT/{train,valid,test}/<spk>-snips-<split>-<n>.wav "
            "(valid -> dev), with SUPERB's speakers per split. utt2slots holds the words with "
            "each slot value between B-<slot> and E-<slot>."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="SNIPS folder")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{train,dev,test}")
    p.add_argument("--tolerant", action="store_true", help="skip and count bad utterances")
    p.set_defaults(func=_snips)

    p = verbs.add_parser(
        "prepare-quesst14",
        help="QUESST 2014 (English) -> query-by-example root OUT/{dev,test}/{queries,docs,hits}",
        description=(
            "Prepare SUPERB query by example from QUESST 2014's layout: ROOT/Audio/*.wav, "
            "ROOT/{dev,eval}_queries/*.wav, ROOT/language_key_{utterances,dev,eval}.lst "
            "(nnenglish lines kept) and the ground truth "
            "ROOT/scoring/groundtruth_quesst14_{dev,eval}/quesst14_{dev,eval}.rttm (eval -> test)."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="quesst14Database")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{dev,test}")
    p.add_argument("--tolerant", action="store_true", help="skip and count bad list lines")
    p.set_defaults(func=_quesst14)

    p = verbs.add_parser(
        "prepare-diarization",
        help="LibriMix-style diarization dirs -> speaker-diarization dirs OUT/{train,dev,test} "
        "(utt2activity)",
        description=(
            "Prepare SUPERB speaker diarization from Kaldi dirs ROOT/{train,dev,test} holding "
            "mixtures (wav.scp, segments, utt2spk, reco2dur) and the reference rttm, as "
            "LibriMix-style data is prepared: one utterance per recording, its speakers' turns "
            "in utt2activity (2 speakers at most)."
        ),
    )
    p.add_argument("--corpus-dir", required=True, metavar="ROOT", help="holds train/ dev/ test/")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/{train,dev,test}")
    p.set_defaults(func=_diarization)


def _run_prepare(prepare: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """Run a corpus preparation and print its summary lines; on a CorpusProblems error
    print every problem (each names its file) before it propagates."""
    from speechssl.data.prep.common import CorpusProblems, PrepResult

    try:
        result = prepare(*args, **kwargs)
    except CorpusProblems as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise
    assert isinstance(result, PrepResult)
    for line in result.lines():
        print(line)
    return 0


def _librispeech(args: argparse.Namespace) -> int:
    from speechssl.data.prep.librispeech import prepare_librispeech, prepare_librispeech_phones

    if args.lexicon is not None:
        if args.phones_txt is not None:
            from speechssl.data.prep.librispeech import write_phone_inventory

            n = write_phone_inventory(args.lexicon, args.phones_txt, strip_stress=args.strip_stress)
            print(f"{n} phones -> {args.phones_txt}")
        return _run_prepare(
            prepare_librispeech_phones,
            args.corpus_dir,
            args.split,
            args.out,
            args.lexicon,
            strip_stress=args.strip_stress,
            skip_oov=args.skip_oov,
            tolerant=args.tolerant,
            per_chapter_speakers=args.per_chapter_speakers,
        )
    if args.strip_stress or args.skip_oov or args.phones_txt:
        from speechssl.errors import ConfigError

        raise ConfigError(
            "--strip-stress, --skip-oov and --phones-txt only apply with --lexicon FILE"
        )
    return _run_prepare(
        prepare_librispeech,
        args.corpus_dir,
        args.split,
        args.out,
        tolerant=args.tolerant,
        per_chapter_speakers=args.per_chapter_speakers,
    )


def _librilight(args: argparse.Namespace) -> int:
    from speechssl.data.prep.librilight import prepare_librilight

    return _run_prepare(
        prepare_librilight,
        args.corpus_dir,
        args.subset,
        args.out,
        max_segment=args.max_segment,
        tolerant=args.tolerant,
    )


def _speech_commands(args: argparse.Namespace) -> int:
    from speechssl.data.prep.speech_commands import prepare_speech_commands

    return _run_prepare(
        prepare_speech_commands,
        args.corpus_dir,
        args.out,
        test_set_dir=args.test_set_dir,
        silence_seconds=args.silence_seconds,
        tolerant=args.tolerant,
    )


def _voxceleb1(args: argparse.Namespace) -> int:
    from speechssl.data.prep.voxceleb import prepare_voxceleb1_asv, prepare_voxceleb1_sid

    if args.task == "sid":
        if args.dev_speakers is not None:
            from speechssl.errors import ConfigError

            raise ConfigError("--dev-speakers only applies with --task asv")
        return _run_prepare(
            prepare_voxceleb1_sid,
            args.corpus_dir,
            args.out,
            split_file=args.list,
            tolerant=args.tolerant,
        )
    return _run_prepare(
        prepare_voxceleb1_asv,
        args.corpus_dir,
        args.out,
        trials_file=args.list,
        dev_speakers=20 if args.dev_speakers is None else args.dev_speakers,
        tolerant=args.tolerant,
    )


def _fluent_speech_commands(args: argparse.Namespace) -> int:
    from speechssl.data.prep.fluent_speech_commands import prepare_fluent_speech_commands

    return _run_prepare(
        prepare_fluent_speech_commands, args.corpus_dir, args.out, tolerant=args.tolerant
    )


def _iemocap(args: argparse.Namespace) -> int:
    from speechssl.data.prep.iemocap import prepare_iemocap

    return _run_prepare(
        prepare_iemocap, args.corpus_dir, args.out, dev_ratio=args.dev_ratio, seed=args.seed,
        tolerant=args.tolerant,
    )  # fmt: skip


def _snips(args: argparse.Namespace) -> int:
    from speechssl.data.prep.snips import prepare_snips

    return _run_prepare(prepare_snips, args.corpus_dir, args.out, tolerant=args.tolerant)


def _quesst14(args: argparse.Namespace) -> int:
    from speechssl.data.prep.quesst14 import prepare_quesst14

    return _run_prepare(prepare_quesst14, args.corpus_dir, args.out, tolerant=args.tolerant)


def _diarization(args: argparse.Namespace) -> int:
    from speechssl.data.prep.diarization import prepare_diarization

    return _run_prepare(prepare_diarization, args.corpus_dir, args.out)
