"""The built-in models and deployment the emulator runs, and the registry the pipeline's catalogue reads.

Each model declares its Cog-style input and output schema (served by the version endpoint), validates
input the way Replicate answers it (422 ``Input validation failed`` with ``invalid_fields``), and says
what its output looks like part-way through and at the end, and which files it serves.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ai_pipeline.dev.emulator.artifacts import caption_for, derived_seed, generate_tokens, render_png

IMAGE_MODEL = "emulator/image"
IMAGE_MODEL_VERSION = "e4f0e6dcdee7fb9512a589c55dc13d2fbb4c4af066e8523c638ca9ef7f7fef07"
IMAGES_MODEL = "emulator/images"
IMAGES_MODEL_VERSION = "b7b75d1b4bd0adb496d981980b5a7a25d77bc082bcb3d36706f2c41759265343"
TEXT_MODEL = "emulator/text"
TEXT_MODEL_VERSION = "c80ceaa8e5bf46e44f00613a674ef2fcddf37302dfeb631d705ff3e372d8df18"
CAPTION_MODEL = "emulator/caption"
CAPTION_MODEL_VERSION = "286a8a258c391a73565c79d371a3b4159c371b8c47b14020223c08426f1e5aa6"
IMAGE_DEPLOYMENT = "emulator/image-deployment"

COG_VERSION = "0.13.6"
VERSIONS_CREATED_AT = "2025-01-15T12:00:00.000000Z"

# file name -> builds the file's bytes
FileRecipes = dict[str, Callable[[], bytes]]
# file name -> absolute URL of that file for this prediction
FileUrl = Callable[[str], str]


@dataclass(frozen=True)
class InputIssue:
    """One entry of a 422 ``invalid_fields`` list, worded as Replicate's validator words it."""

    type: str
    field: str
    description: str


@dataclass(frozen=True)
class BuiltinModel(ABC):
    """A model the emulator can run: identity, schemas, and how its output is produced."""

    owner: str
    name: str
    version_id: str
    official: bool
    description: str
    hardware: str
    input_properties: dict[str, dict[str, Any]]
    required_inputs: tuple[str, ...]
    output_schema: dict[str, Any]
    streams: bool = False
    progress_steps: int = 20

    @property
    def ref(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"

    @property
    def served_version(self) -> str:
        """The ``version`` a prediction reports when it was created by model name (an official model):
        not the model's listed version id, as Replicate answers (it serves official models from its own
        deployments, and names those)."""
        return "dp-" + hashlib.sha256(self.ref.encode()).hexdigest()[:32]

    def effective_input(self, given: dict[str, Any]) -> dict[str, Any]:
        """The input with schema defaults filled in (what the model actually runs with)."""
        values = {name: spec["default"] for name, spec in self.input_properties.items() if "default" in spec}
        values.update({k: v for k, v in given.items() if k in self.input_properties})
        return values

    def seed_for(self, given: dict[str, Any]) -> int:
        """The seed a run uses: the given one, else one derived from the prompt."""
        seed = given.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
        return derived_seed(str(given.get("prompt", "")))

    def validate_input(self, given: Any) -> list[InputIssue]:
        """Problems with ``given`` against the input schema; empty when it is acceptable."""
        if not isinstance(given, dict):
            return [
                InputIssue(
                    "invalid_type", "input", f"Invalid type. Expected: object, given: {_json_type(given)}"
                )
            ]
        issues = [
            InputIssue("required", "input", f"{name} is required")
            for name in self.required_inputs
            if given.get(name) is None
        ]
        for name, value in given.items():
            spec = self.input_properties.get(name)
            if spec is None or value is None:
                continue  # Cog ignores inputs it does not declare
            issues.extend(_check_property(name, value, spec))
        return issues

    def version_json(self) -> dict[str, Any]:
        """The version object served by ``GET /v1/models/{owner}/{name}/versions/{id}``."""
        input_schema = {
            "type": "object",
            "title": "Input",
            "required": list(self.required_inputs),
            "properties": self.input_properties,
        }
        return {
            "id": self.version_id,
            "created_at": VERSIONS_CREATED_AT,
            "cog_version": COG_VERSION,
            "openapi_schema": {
                "openapi": "3.0.2",
                "info": {"title": "Cog", "version": "0.1.0"},
                "paths": {},
                "components": {"schemas": {"Input": input_schema, "Output": self.output_schema}},
            },
        }

    def model_json(self, base_url: str, run_count: int) -> dict[str, Any]:
        """The model object served by ``GET /v1/models/{owner}/{name}``."""
        return {
            "url": f"{base_url}/{self.ref}",
            "owner": self.owner,
            "name": self.name,
            "description": self.description,
            "visibility": "public",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": run_count,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": self.version_json(),
            "is_official": self.official,
        }

    @abstractmethod
    def output(self, given: dict[str, Any], seed: int, file_url: FileUrl, progress: float) -> Any:
        """The output after ``progress`` (0..1) of the run; ``progress == 1`` is the final output."""

    def files(self, given: dict[str, Any], seed: int) -> FileRecipes:
        """The output files this run serves under ``/_delivery/``."""
        return {}

    def extra_metrics(self, given: dict[str, Any], seed: int, output: Any) -> dict[str, Any]:
        """Per-output metrics official models report (images or tokens), for per-output pricing."""
        return {}


class ImageModel(BuiltinModel):
    """One prompt in, one PNG URL out."""

    def output(self, given: dict[str, Any], seed: int, file_url: FileUrl, progress: float) -> Any:
        return file_url("out-0.png") if progress >= 1 else None

    def files(self, given: dict[str, Any], seed: int) -> FileRecipes:
        prompt = str(given["prompt"])
        return {"out-0.png": lambda: render_png(prompt, seed, 0)}


class ImagesModel(BuiltinModel):
    """One prompt in, a list of ``num_outputs`` PNG URLs out (an official model, priced per image)."""

    def output(self, given: dict[str, Any], seed: int, file_url: FileUrl, progress: float) -> Any:
        return [file_url(name) for name in self.files(given, seed)] if progress >= 1 else None

    def files(self, given: dict[str, Any], seed: int) -> FileRecipes:
        values = self.effective_input(given)
        prompt = str(values["prompt"])
        return {
            f"out-{index}.png": functools.partial(render_png, prompt, seed + index, index)
            for index in range(int(values["num_outputs"]))
        }

    def extra_metrics(self, given: dict[str, Any], seed: int, output: Any) -> dict[str, Any]:
        return {"image_count": len(output)} if isinstance(output, list) else {}


class TextModel(BuiltinModel):
    """A language model: the output is a list of tokens that grows while it runs (and streams)."""

    def _tokens(self, given: dict[str, Any], seed: int) -> tuple[str, ...]:
        values = self.effective_input(given)
        return generate_tokens(str(values["prompt"]), int(values["max_tokens"]), seed)

    def output(self, given: dict[str, Any], seed: int, file_url: FileUrl, progress: float) -> Any:
        tokens = self._tokens(given, seed)
        return list(tokens[: int(len(tokens) * min(progress, 1.0))])

    def extra_metrics(self, given: dict[str, Any], seed: int, output: Any) -> dict[str, Any]:
        return {
            "input_token_count": len(str(given.get("prompt", "")).split()),
            "output_token_count": len(output) if isinstance(output, list) else 0,
        }


class CaptionModel(BuiltinModel):
    """A prompt in, a dict out: a caption, a PNG URL and a score."""

    def output(self, given: dict[str, Any], seed: int, file_url: FileUrl, progress: float) -> Any:
        if progress < 1:
            return None
        caption, score = caption_for(str(given["prompt"]))
        return {"caption": caption, "image": file_url("out-0.png"), "score": score}

    def files(self, given: dict[str, Any], seed: int) -> FileRecipes:
        prompt = str(given["prompt"])
        return {"out-0.png": lambda: render_png(prompt, seed, 0)}


@dataclass(frozen=True)
class BuiltinDeployment:
    """A deployment: a named, always-on release of one model version."""

    owner: str
    name: str
    model: BuiltinModel
    hardware: str
    min_instances: int = 1
    max_instances: int = 5

    @property
    def ref(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"

    def deployment_json(self) -> dict[str, Any]:
        """The deployment object served by ``GET /v1/deployments/{owner}/{name}``."""
        return {
            "owner": self.owner,
            "name": self.name,
            "current_release": {
                "number": 1,
                "model": self.model.ref,
                "version": self.model.version_id,
                "created_at": VERSIONS_CREATED_AT,
                "created_by": {
                    "type": "organization",
                    "username": self.owner,
                    "name": "Emulator",
                    "github_url": None,
                },
                "configuration": {
                    "hardware": self.hardware,
                    "min_instances": self.min_instances,
                    "max_instances": self.max_instances,
                },
            },
        }


_PROMPT = {"type": "string", "title": "Prompt", "x-order": 0, "description": "What to generate."}
_SEED = {
    "type": "integer",
    "title": "Seed",
    "x-order": 9,
    "description": "Random seed. Derived from the prompt if unset.",
}

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.ref: model
    for model in (
        ImageModel(
            owner="emulator",
            name="image",
            version_id=IMAGE_MODEL_VERSION,
            official=False,
            description="Deterministic 64x64 PNG from a prompt and seed (one output URL).",
            hardware="gpu-t4",
            input_properties={"prompt": _PROMPT, "seed": _SEED},
            required_inputs=("prompt",),
            output_schema={"type": "string", "format": "uri", "title": "Output"},
        ),
        ImagesModel(
            owner="emulator",
            name="images",
            version_id=IMAGES_MODEL_VERSION,
            official=True,
            description="Official-style image model: a list of deterministic PNGs, priced per image.",
            hardware="gpu-a40-large",
            input_properties={
                "prompt": _PROMPT,
                "num_outputs": {
                    "type": "integer",
                    "title": "Num Outputs",
                    "x-order": 1,
                    "default": 2,
                    "minimum": 1,
                    "maximum": 4,
                    "description": "Number of images to output.",
                },
                "seed": _SEED,
            },
            required_inputs=("prompt",),
            output_schema={"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"},
        ),
        TextModel(
            owner="emulator",
            name="text",
            version_id=TEXT_MODEL_VERSION,
            official=True,
            description="Official-style language model: streams a list of tokens, priced per token.",
            hardware="gpu-a100-large",
            input_properties={
                "prompt": _PROMPT,
                "max_tokens": {
                    "type": "integer",
                    "title": "Max Tokens",
                    "x-order": 1,
                    "default": 16,
                    "minimum": 1,
                    "maximum": 4096,
                    "description": "Number of tokens to generate.",
                },
            },
            required_inputs=("prompt",),
            output_schema={
                "type": "array",
                "items": {"type": "string"},
                "title": "Output",
                "x-cog-array-type": "iterator",
                "x-cog-array-display": "concatenate",
            },
            streams=True,
        ),
        CaptionModel(
            owner="emulator",
            name="caption",
            version_id=CAPTION_MODEL_VERSION,
            official=False,
            description="Returns a dict: a caption, a PNG URL and a score.",
            hardware="cpu",
            input_properties={"prompt": _PROMPT},
            required_inputs=("prompt",),
            output_schema={
                "type": "object",
                "title": "Output",
                "required": ["caption", "image", "score"],
                "properties": {
                    "caption": {"type": "string"},
                    "image": {"type": "string", "format": "uri"},
                    "score": {"type": "number"},
                },
            },
            progress_steps=1,
        ),
    )
}

MODELS_BY_VERSION: dict[str, BuiltinModel] = {model.version_id: model for model in BUILTIN_MODELS.values()}

BUILTIN_DEPLOYMENTS: dict[str, BuiltinDeployment] = {
    IMAGE_DEPLOYMENT: BuiltinDeployment(
        owner="emulator", name="image-deployment", model=BUILTIN_MODELS[IMAGE_MODEL], hardware="gpu-t4"
    )
}


def model_versions() -> list[dict[str, Any]]:
    """The registry as plain data: one entry per model (name, version id, official flag, output, hardware)."""
    return [
        {
            "model": model.ref,
            "version": model.version_id,
            "official": model.official,
            "output": model.output_schema["type"],
            "hardware": model.hardware,
            "description": model.description,
        }
        for model in BUILTIN_MODELS.values()
    ]


def find_version(version: str) -> BuiltinModel | None:
    """The model a ``version`` field names: a bare id, ``owner/name:id``, or an official ``owner/name``."""
    if ":" in version:
        ref, _, version_id = version.partition(":")
        model = MODELS_BY_VERSION.get(version_id)
        return model if model is not None and model.ref == ref else None
    if "/" in version:
        model = BUILTIN_MODELS.get(version)
        return model if model is not None and model.official else None
    return MODELS_BY_VERSION.get(version)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_property(name: str, value: Any, spec: dict[str, Any]) -> list[InputIssue]:
    field_name = f"input.{name}"
    expected = spec["type"]
    given = _json_type(value)
    is_integral_number = given == "number" and float(value).is_integer()
    if expected == "integer" and not (given == "integer" or is_integral_number):
        return [InputIssue("invalid_type", field_name, f"Invalid type. Expected: integer, given: {given}")]
    if expected == "string" and given != "string":
        return [InputIssue("invalid_type", field_name, f"Invalid type. Expected: string, given: {given}")]
    issues = []
    if "minimum" in spec and value < spec["minimum"]:
        issues.append(
            InputIssue("number_gte", field_name, f"Must be greater than or equal to {spec['minimum']}")
        )
    if "maximum" in spec and value > spec["maximum"]:
        issues.append(
            InputIssue("number_lte", field_name, f"Must be less than or equal to {spec['maximum']}")
        )
    return issues
