"""``phonetic`` features: the ``mfcc`` rows plus what the mouth does for the phone being spoken.

MFCC rows describe one speaker's voice through one microphone; from a minute of one person, a regression on
them learns that speaker's sounds, not speech. A phone recogniser trained on hundreds of speakers knows more:
whatever the voice, an ``AA`` opens the jaw, a ``B`` / ``P`` / ``M`` closes the lips. PocketSphinx (a pip
package, BSD licence) ships a US-English acoustic model and a phone language model; in its all-phone mode it
labels every 10 ms of audio with one of 39 phones or silence, in any language (an English phone inventory on
German or French speech is a coarse labelling, but vowel height, lip closure and rounding carry over).

Each 50 Hz row is the 26 ``mfcc`` values (:mod:`gaussiantalker.audio.mfcc`, unchanged) followed by six
articulatory values of the phone at the row's time (:data:`ARTICULATION`): jaw opening (0 closed .. 1 wide:
open vowels 1, mid 2/3, close 1/3, bilabials 0, other consonants 1/6), lip closure (bilabials), lip-teeth contact
(labiodentals), lip rounding, vowel, and silence / noise. D = 32.

Rows come from blocks (:data:`PLAN`: 1 s kept, with 1 s of past and 0.5 s of future context, each decoded as an
utterance of its own with its own cepstral mean), so offline rows and streaming rows are the very same
computation and agree exactly; a stream gives a row at most 1.5 s after its time (as ``hubert``'s).
"""

from __future__ import annotations

import os

import numpy as np

from .base import BlockPlan, Extractor
from .mfcc import _mfcc_padded

__all__ = ["ARTICULATION", "ARTICULATION_NAMES", "DIM", "PHONES", "PLAN", "PhoneticExtractor", "articulation_rows"]

PHONES = tuple("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z "
               "ZH".split())
"""The 39 phones of the recogniser (ARPAbet, as CMUdict writes them); any other label is silence or noise."""
ARTICULATION_NAMES = ("jaw", "lips_closed", "lip_teeth", "rounded", "vowel", "silence")
_JAW = {"AA": 3, "AE": 3, "AO": 3, "AW": 3, "AY": 3, "AH": 2, "EH": 2, "EY": 2, "OW": 2, "OY": 2,
        "ER": 1, "IH": 1, "IY": 1, "UH": 1, "UW": 1}
_ROUNDED = {"UW", "UH", "OW", "AO", "OY", "W", "SH", "ZH", "CH", "JH"}


def _articulation(phone: str) -> tuple[float, ...]:
    if phone not in PHONES:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    jaw = _JAW.get(phone, 0.5) / 3.0
    if phone in ("B", "P", "M"):
        jaw = 0.0
    return (jaw, float(phone in ("B", "P", "M")), float(phone in ("F", "V")), float(phone in _ROUNDED),
            float(phone in _JAW), 0.0)


ARTICULATION = {p: _articulation(p) for p in PHONES + ("SIL",)}
"""Phone -> its six articulatory values (:data:`ARTICULATION_NAMES`); silence and noise labels: ``SIL``'s."""
DIM = 26 + len(ARTICULATION_NAMES)
PLAN = BlockPlan(block=50, left=50, right=25)
MFCC_DIM = 26
SILENCE_DBFS = -60.0
"""Rows quieter than this (RMS of their 25 ms, dB of full scale) are silence, whatever phone was recognised."""


def articulation_rows(segments, n: int) -> np.ndarray:
    """``[n, 6]`` articulatory rows from phone segments ``[(phone, first_frame, last_frame)]`` at 100 frames/s
    (row ``k`` at 50 Hz reads frame ``2k``; frames no segment covers are silence)."""
    labels = ["SIL"] * (2 * n)
    for phone, first, last in segments:
        for t in range(max(0, int(first)), min(int(last) + 1, 2 * n)):
            labels[t] = phone
    silence = ARTICULATION["SIL"]
    return np.asarray([ARTICULATION.get(labels[2 * k], silence) for k in range(n)], np.float32).reshape(n, -1)


class PhoneticExtractor(Extractor):
    """The ``phonetic`` kind: ``mfcc`` rows + the articulation of the recognised phone (D = 32)."""

    kind = "phonetic"

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder, get_model_path
        except ImportError as err:  # a core dependency; a broken install says so
            raise ImportError("the 'phonetic' audio features need pocketsphinx: `pip install pocketsphinx`") from err
        import pocketsphinx

        model = get_model_path()
        # batch CMN: each block is normalised by its own cepstral mean. A decoder still carries state from one
        # utterance to the next (the same block decoded after another gives other phones), so every block gets a
        # fresh decoder from this configuration (~0.1 s): a block's phones depend on its own audio only.
        self._decoder_class = Decoder
        self._config = dict(hmm=os.path.join(model, "en-us", "en-us"),
                            allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                            lw=2.0, beam=1e-20, pbeam=1e-20, cmn="batch", logfn=os.devnull)
        self.dim = DIM
        self.plan = PLAN
        version = getattr(pocketsphinx, "__version__", "5")
        self.source = (f"python_speech_features MFCC + pocketsphinx {version} en-us all-phone articulation, "
                       f"blocks {PLAN}")

    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        mfcc = _mfcc_padded(chunk)  # [n, 26]
        n = mfcc.shape[0]
        # Row k is centred on chunk sample 320k + 200; PocketSphinx frame t (410 samples from 160t) on 160t + 205.
        pcm = (np.clip(chunk, -1.0, 1.0) * 32767.0).astype(np.int16)
        d = self._decoder_class(**self._config)
        d.start_utt()
        d.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        d.end_utt()
        art = articulation_rows([(s.word, s.start_frame, s.end_frame) for s in d.seg()], n)
        # The recogniser finds phones in digital silence (zero padding, muted passages): a row whose 25 ms is
        # under SILENCE_DBFS is silence whatever it was labelled.
        frames = np.lib.stride_tricks.sliding_window_view(chunk.astype(np.float64), 400)[::320][:n]
        rms = np.sqrt((frames * frames).mean(1))
        art[rms < 10.0 ** (SILENCE_DBFS / 20.0)] = ARTICULATION["SIL"]
        return np.concatenate([mfcc, art], 1)
