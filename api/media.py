# Task media: the files that travel with a task - an image a node produced, the
# audio a client sent - between the wire (base64 in JSON) and the store (Blob).
#
# Rules:
# - A task's result stays a string, as the reference has it. An image result is
#   stored as the task's `image.png` file and the result is the path of the route
#   that serves it (`/api/tasks/<id>/image.png`, made absolute by the route that
#   shows the task); the task's `content_type` says what it is.
# - Nothing a node sends is trusted: an image must decode from base64, be a PNG
#   (its signature and IHDR size checked against what the node claims) and fit
#   MAX_BLOB_BYTES, else the task's result is an error saying so.
# - Audio from a client is kept as it came (WAV, FLAC, MP3, OGG) in the task's
#   `input.audio` file (input_blob) and goes to the worker in the assign frame's input as base64.
#   Its length in seconds is measured here, from the decoded file, and that is what
#   the task is sized and metered by (not a number the client sends).
from __future__ import annotations

import base64
import binascii
import struct
from typing import Any, Mapping

import attrs
import trio

from engine.core import MODELS

from .records import MAX_BLOB_BYTES, Blob
from .validation import MAX_UPLOAD_BYTES, InvalidRequest, TaskRequest

__all__ = [
    "IMAGE_BLOB", "ImageResult", "MediaError", "decode_base64", "image_path",
    "image_result", "input_blob", "input_files", "measure_audio", "task_inputs",
]

IMAGE_BLOB = "image.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MediaError(ValueError):
    """A file that is not what it must be; the message says what is wrong."""


@attrs.frozen
class ImageResult:
    path: str  # the route that serves it
    content_type: str
    blob: Blob
    width: int
    height: int


def decode_base64(text: str, what: str, limit: int = MAX_BLOB_BYTES) -> bytes:
    """Strict base64 (standard alphabet, padding) of at most `limit` bytes decoded."""
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise MediaError(f"{what} is over {limit} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what} is not valid base64") from None
    if not data:
        raise MediaError(f"{what} is empty")
    return data


def image_path(task_id: str) -> str:
    return f"/api/tasks/{task_id}/{IMAGE_BLOB}"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; MediaError when it is no PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise MediaError("the image is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def image_result(task_id: str, output: Any) -> ImageResult | None:
    """The stored form of an image output (a runner's {"image_png_base64", "width",
    "height", ...}); None when the output is not an image. MediaError when it claims
    to be one and is not."""
    if not isinstance(output, Mapping) or "image_png_base64" not in output:
        return None
    encoded = output["image_png_base64"]
    if not isinstance(encoded, str):
        raise MediaError("the node's image is not a base64 string")
    data = decode_base64(encoded, "the node's image")
    width, height = png_size(data)
    claimed = (output.get("width"), output.get("height"))
    if claimed != (None, None) and claimed != (width, height):
        raise MediaError(f"the node's image is {width}x{height}, not the "
                         f"{claimed[0]}x{claimed[1]} it claims")
    return ImageResult(image_path(task_id), "image/png", Blob(IMAGE_BLOB, "image/png", data),
                       width, height)


def measure_audio(data: bytes) -> float:
    """Seconds of audio in a file (WAV, FLAC, MP3, OGG), from its decoded samples.
    CPU work: call it from a thread. MediaError when it is no readable audio."""
    # The worker's decoder (libsndfile + soxr), without any inference library.
    from engine.worker.runners.audio import audio_seconds
    from engine.worker.runners.base import InvalidTaskInput

    try:
        return audio_seconds(data)
    except InvalidTaskInput as exc:
        raise MediaError(str(exc)) from None


async def input_files(task: TaskRequest) -> tuple[TaskRequest, tuple[Blob, ...]]:
    """A validated task with its input files taken out (to be stored as the task's
    files) and its measured sizes put in: the audio's length. InvalidRequest naming
    the field when a file is unusable."""
    audio = task.fields.get("audio")
    if audio is None:
        return task, ()
    try:
        data = decode_base64(audio, "the 'audio' field", MAX_UPLOAD_BYTES)
        seconds = await trio.to_thread.run_sync(measure_audio, data)
    except MediaError as exc:
        raise InvalidRequest(f"The 'audio' field is wrong: {exc}") from None
    if not seconds > 0:
        raise InvalidRequest("The 'audio' field holds no sound (0 seconds)")
    fields = {k: v for k, v in task.fields.items() if k != "audio"}
    fields["audio_seconds"] = round(seconds, 3)
    return attrs.evolve(task, fields=fields), (Blob(input_blob("audio"), "application/octet-stream", data),)


async def task_inputs(store: Any, task_id: str, model: str, prompt: str) -> dict[str, Any]:
    """The assign frame's `input` of a stored task: its prompt, and its input files
    (base64) for kinds that have them."""
    inputs: dict[str, Any] = {"prompt": prompt}
    for field in MODELS[model].kind.fields:
        if field.input:
            blob = await store.get_blob(task_id, input_blob(field.name))
            if blob is not None:
                inputs[field.name] = base64.b64encode(blob.data).decode("ascii")
    return inputs


def input_blob(field: str) -> str:
    """The name of the task file that holds an input field."""
    return f"input.{field}"
