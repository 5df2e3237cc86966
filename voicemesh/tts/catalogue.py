"""The voice catalogue: models and their speakers, read from a data file (``voices.json``).

A *model* is one sherpa-onnx TTS model in ``<models_dir>/<folder>/``; a *voice* is one
speaker of one model with a name, language, gender and tags. Whether a model is
installed is a plain function of which files exist, so ``voicemesh models list``,
``GET /v1/voices`` and the engine loader all agree. No model library is imported here.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from voicemesh.errors import ModelAssetError, ModelConflict, UnknownModel
from voicemesh.tts.engine import ModelFamily, TtsModelFiles

_LOGGER = logging.getLogger(__name__)

SPEAKER_REF = re.compile(r"^(?:(?P<model>[^:\s]+):)?(?P<index>\d+)$")
"""The speaker-index form of a voice: ``77`` (of the model asked for) or ``vits-zh-aishell3:77``."""
CATALOGUE_FILE = Path(__file__).with_name("voices.json")
"""The catalogue shipped with VoiceMesh."""
Gender = Literal["female", "male", "neutral", "unknown"]


class ModelFileNames(BaseModel):
    """File names of one model, relative to its folder."""

    model: str
    tokens: str
    lexicon: str | None = None
    dict_dir: str | None = None
    rule_fsts: list[str] = Field(default_factory=list)
    voices: str | None = None
    vocoder: str | None = None


class SpeakerRange(BaseModel):
    """Speakers ``first..last`` of a model, one voice each, named by patterns with ``{sid}``."""

    first: int = Field(ge=0)
    last: int = Field(ge=0)
    id: str
    name: str
    gender: Gender = "unknown"
    tags: list[str] = Field(default_factory=list)
    moods: list[str] = Field(default_factory=list)


class ModelEntry(BaseModel):
    """One model of the catalogue."""

    id: str
    family: ModelFamily
    folder: str
    description: str = ""
    language: str
    sample_rate: int
    files: ModelFileNames
    espeak_voice: str | None = None
    """Set for models whose text is phonemised with espeak-ng (Piper, Kokoro, Matcha)."""
    bundled: str | None = None
    """Name of the bundled model (``voicemesh models prepare``) that provides the folder."""
    speaker_ranges: list[SpeakerRange] = Field(default_factory=list)


class VoiceEntry(BaseModel):
    """One voice: a speaker of a model, as the catalogue file and the API show it."""

    id: str
    name: str
    model: str
    speaker_id: int = Field(0, ge=0)
    language: str
    gender: Gender = "unknown"
    tags: list[str] = Field(default_factory=list)
    moods: list[str] = Field(default_factory=list)
    """How the voice sounds (calm, warm, cheerful...): ``GET /v1/tts/voices?mood=`` filters."""


class CatalogueFile(BaseModel):
    """The whole data file."""

    about: str = ""
    models: list[ModelEntry]
    voices: list[VoiceEntry]


@dataclass(frozen=True)
class Voice:
    """A voice with what its model adds: family, sample rate and whether it is installed."""

    entry: VoiceEntry
    model: ModelEntry
    installed: bool

    @property
    def id(self) -> str:
        """The voice id clients use."""
        return self.entry.id

    @property
    def speaker_ref(self) -> str:
        """The voice in speaker-index form: ``<model id>:<speaker index>``."""
        return f"{self.model.id}:{self.entry.speaker_id}"

    def describe(self) -> dict[str, Any]:
        """The voice as ``GET /v1/voices`` returns it."""
        return {
            **self.entry.model_dump(),
            "speaker_ref": self.speaker_ref,
            "family": self.model.family,
            "sample_rate": self.model.sample_rate,
            "installed": self.installed,
        }


def read_catalogue(path: Path | None = None) -> CatalogueFile:
    """Parse a catalogue file (default: the shipped one); ModelAssetError when invalid."""
    source = path or CATALOGUE_FILE
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
        catalogue = CatalogueFile.model_validate(data)
    except (OSError, ValueError) as exc:
        raise ModelAssetError(f"voice catalogue {source} is unreadable: {exc}") from exc
    ids = {m.id for m in catalogue.models}
    unknown = [v.id for v in catalogue.voices if v.model not in ids]
    if unknown:
        raise ModelAssetError(f"voice catalogue {source}: voices {unknown} name unknown models")
    return catalogue


def _expand(catalogue: CatalogueFile) -> list[tuple[VoiceEntry, ModelEntry]]:
    """Every voice, with speaker ranges expanded, paired with its model."""
    models = {m.id: m for m in catalogue.models}
    pairs = [(v, models[v.model]) for v in catalogue.voices]
    for model in catalogue.models:
        for rng in model.speaker_ranges:
            for sid in range(rng.first, rng.last + 1):
                entry = VoiceEntry(
                    id=rng.id.format(sid=sid),
                    name=rng.name.format(sid=sid),
                    model=model.id,
                    speaker_id=sid,
                    language=model.language,
                    gender=rng.gender,
                    tags=list(rng.tags),
                    moods=list(rng.moods),
                )
                pairs.append((entry, model))
    return pairs


def model_folder(model: ModelEntry, models_dir: Path) -> Path:
    """Where a model's files live."""
    return models_dir / model.folder


def missing_files(model: ModelEntry, models_dir: Path) -> list[Path]:
    """The files of ``model`` not present under ``models_dir`` (empty when installed)."""
    return model_files(model, models_dir, espeak_data=None).missing()


def model_files(model: ModelEntry, models_dir: Path, espeak_data: Path | None) -> TtsModelFiles:
    """The engine's description of a catalogue model's files."""
    folder = model_folder(model, models_dir)
    names = model.files

    def opt(name: str | None) -> Path | None:
        return folder / name if name else None

    return TtsModelFiles(
        family=model.family,
        model=folder / names.model,
        tokens=folder / names.tokens,
        espeak_voice=model.espeak_voice,
        data_dir=espeak_data,
        lexicon=opt(names.lexicon),
        dict_dir=opt(names.dict_dir),
        rule_fsts=tuple(folder / f for f in names.rule_fsts),
        voices=opt(names.voices),
        vocoder=opt(names.vocoder),
    )


class VoiceCatalogue:
    """The catalogue as a service uses it: voices by id, filters, installed state."""

    def __init__(self, catalogue: CatalogueFile, models_dir: Path) -> None:
        self.file = catalogue
        self.models_dir = models_dir
        self.models = {m.id: m for m in catalogue.models}
        self.installed_models = {m.id for m in catalogue.models if not missing_files(m, models_dir)}
        self.voices: dict[str, Voice] = {}
        for entry, model in _expand(catalogue):
            self.voices[entry.id] = Voice(entry, model, model.id in self.installed_models)

    @classmethod
    def load(cls, models_dir: Path, path: Path | None = None) -> VoiceCatalogue:
        """Read the catalogue file and check which models are installed under ``models_dir``."""
        return cls(read_catalogue(path), models_dir)

    def voice(self, voice_id: str) -> Voice:
        """The voice called ``voice_id``; UnknownModel (404, ``unknown_voice``) otherwise."""
        found = self.voices.get(voice_id)
        if found is None:
            sample = ", ".join(v.id for v in self.voices.values() if v.installed) or "none"
            raise UnknownModel(
                f"no voice named {voice_id!r}; installed voices: {sample} "
                "(GET /v1/voices lists all)",
                code="unknown_voice",
            )
        return found

    def model_entry(self, model_id: str) -> ModelEntry:
        """The model called ``model_id``; UnknownModel (404 ``unknown_model``) naming the models."""
        found = self.models.get(model_id)
        if found is None:
            raise UnknownModel(
                f"no TTS model named {model_id!r}; models: {', '.join(sorted(self.models))}",
                code="unknown_model",
            )
        return found

    def speaker(self, model: ModelEntry, index: int) -> Voice:
        """Speaker ``index`` of ``model``; UnknownModel (404 ``unknown_voice``) saying the range."""
        voices = [v for v in self.voices.values() if v.model.id == model.id]
        for voice in voices:
            if voice.entry.speaker_id == index:
                return voice
        ids = sorted(v.entry.speaker_id for v in voices)
        have = f"{ids[0]}..{ids[-1]}" if ids else "none"
        raise UnknownModel(
            f"model {model.id} has no speaker {index}; its speaker indexes are {have}",
            code="unknown_voice",
        )

    def resolve(self, voice_id: int | str | None, model: str | None, default_voice: str) -> Voice:
        """The voice a request names, by id, by speaker index or by model (not yet checked
        to be installed).

        ``voice_id`` is a catalogue id, a speaker index (an int, digits, or
        ``<model>:<index>``) of ``model`` (default: the default voice's model), or None:
        ``model``'s first speaker, or the default voice when no model is named either. A
        voice of another model than ``model`` is a :class:`ModelConflict` (409).
        """
        wanted = self.model_entry(model) if model is not None else None
        if isinstance(voice_id, int):
            voice_id = str(voice_id)
        if voice_id is None:
            if wanted is None:
                return self.voice(default_voice)
            return min(
                (v for v in self.voices.values() if v.model.id == wanted.id),
                key=lambda v: v.entry.speaker_id,
            )
        ref = SPEAKER_REF.match(voice_id)
        if ref is not None and voice_id not in self.voices:
            named = ref.group("model")
            if named is not None and wanted is not None and named != wanted.id:
                raise ModelConflict(
                    f"voice_id {voice_id!r} names model {named}, but model is {wanted.id}",
                    code="voice_model_mismatch",
                )
            of = self.model_entry(named) if named else wanted
            return self.speaker(of or self.voice(default_voice).model, int(ref.group("index")))
        voice = self.voice(voice_id)
        if wanted is not None and voice.model.id != wanted.id:
            raise ModelConflict(
                f"voice {voice.id!r} is a speaker of model {voice.model.id}, not of "
                f"{wanted.id}; leave model out or name its own",
                code="voice_model_mismatch",
            )
        return voice

    def installed_voice(self, voice_id: str | Voice) -> Voice:
        """The voice, which must be installed here (404 ``voice_not_installed`` otherwise)."""
        voice = voice_id if isinstance(voice_id, Voice) else self.voice(voice_id)
        if not voice.installed:
            missing = missing_files(voice.model, self.models_dir)
            raise UnknownModel(
                f"voice {voice.id!r} needs model {voice.model.id}, which is not installed "
                f"here: missing {', '.join(str(p) for p in missing[:3])}",
                code="voice_not_installed",
            )
        return voice

    def filter(
        self,
        *,
        model: str | None = None,
        language: str | None = None,
        gender: str | None = None,
        tag: str | None = None,
        mood: str | None = None,
        installed: bool | None = None,
    ) -> list[Voice]:
        """Voices matching every given filter; language matches a prefix (``en`` ~ ``en-US``)."""
        out: list[Voice] = []
        for voice in self.voices.values():
            entry = voice.entry
            if model is not None and voice.model.id != model:
                continue
            if language is not None and not _language_matches(entry.language, language):
                continue
            if gender is not None and entry.gender != gender:
                continue
            if tag is not None and tag.lower() not in (t.lower() for t in entry.tags):
                continue
            if mood is not None and mood.lower() not in (m.lower() for m in entry.moods):
                continue
            if installed is not None and voice.installed != installed:
                continue
            out.append(voice)
        return out

    def model_status(self) -> list[tuple[ModelEntry, list[Path]]]:
        """Each model with the files it lacks here (empty list: installed)."""
        return [(m, missing_files(m, self.models_dir)) for m in self.file.models]


def _language_matches(voice_language: str, wanted: str) -> bool:
    """``en`` matches ``en-US``; ``en_US`` and ``en-us`` are the same."""
    have = voice_language.lower().replace("_", "-")
    want = wanted.lower().replace("_", "-")
    return have == want or have.startswith(want + "-")
