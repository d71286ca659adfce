"""GET/PUT/PATCH/DELETE /videos/{id}, plus the best frame as a JPEG and the file for playback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from service.errors import error_responses
from service.metadata import BadMetadata, check_metadata, merge_patch
from service.routes.deps import MetricsDep, SettingsDep, State, WriteLock, require_api_key
from service.schemas import VideoChanged, VideoFeaturesIn, VideoInfo
from service.settings import Settings
from service.state import ServiceState
from service.stores.base import VideoNotFound
from service.uploads import BadVideo, features_from_file, features_from_json

router = APIRouter(prefix="/videos", tags=["videos"], dependencies=[Depends(require_api_key)])

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
UPLOAD_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
READ_ERRORS = error_responses(401, 404, 422, 500, 503)
BINARY = {"schema": {"type": "string", "format": "binary"}}
WRITE_ERRORS = error_responses(401, 413, 415, 422, 500, 503)


def _check_id(video_id: str) -> str:
    if not VIDEO_ID.match(video_id):
        raise HTTPException(
            422, "video id must be 1-128 characters of letters, digits, '.', '_' or '-', not starting with '.'"
        )
    return video_id


def _frames_of(state: ServiceState, video_id: str):
    if video_id not in state.catalog:  # the catalog decides: frames a crash left behind are not a video
        raise HTTPException(404, f"no video {video_id!r}")
    try:
        return state.catalog.get_frames([video_id])
    except VideoNotFound:
        raise HTTPException(404, f"no video {video_id!r}") from None


@router.get(
    "/{video_id}",
    response_model=VideoInfo,
    responses=READ_ERRORS,
    summary="what the catalog holds for a video",
)
async def get_video(video_id: str, state: State) -> VideoInfo:
    _check_id(video_id)
    batch = await asyncio.to_thread(_frames_of, state, video_id)
    mask = batch.mask[0]
    return VideoInfo(
        video_id=video_id,
        frames=int(mask.sum()),
        times=[round(float(t), 3) for t in batch.times[0][mask]],
        has_media=state.media.find(video_id) is not None,
        metadata=state.catalog.get_metadata([video_id])[0],
    )


def _metadata(value: Any, limit: int) -> dict[str, Any]:
    try:
        return check_metadata(value, limit)
    except BadMetadata as exc:
        raise HTTPException(422, str(exc)) from None


def _form_metadata(form: Any, limit: int) -> dict[str, Any]:
    """The multipart field 'metadata' (JSON text), {} without one."""
    raw = form.get("metadata")
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise HTTPException(422, "the multipart field 'metadata' must be JSON text, not a file")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the multipart field 'metadata' is not valid JSON: {exc.msg} at {exc.pos}") from None
    return _metadata(value, limit)


async def _save_upload(
    request: Request, settings: Settings, state: ServiceState, video_id: str
) -> tuple[Path, dict[str, Any]]:
    """The multipart field 'file' streamed to a temporary file beside the media folder, and the
    field 'metadata'."""
    limit = settings.max_upload_bytes
    form = await request.form(max_files=1, max_fields=4)
    meta = _form_metadata(form, settings.max_metadata_bytes)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "multipart upload needs a 'file' field holding the video")
    suffix = Path(upload.filename or "").suffix.lower() or ".mp4"
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPException(415, f"video files must end in one of {', '.join(UPLOAD_SUFFIXES)}, got {suffix!r}")
    target = state.media.upload_path(video_id, suffix)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{video_id}.", suffix=suffix)
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > limit:
                out.close()
                os.unlink(tmp)
                raise HTTPException(413, f"upload larger than the {limit}-byte limit")
            out.write(chunk)
    return Path(tmp), meta


@router.put(
    "/{video_id}",
    response_model=VideoChanged,
    responses=WRITE_ERRORS,
    summary="add or replace a video: upload its file (multipart 'file') or send its frame features (JSON)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": VideoFeaturesIn.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "metadata": {
                                "type": "string",
                                "description": "a JSON object kept with the video (title, tags, url, any fields)",
                            },
                        },
                        "required": ["file"],
                    }
                },
            },
            # A body is needed (415 or 422 without one), but declared optional: openapi-python-client up to
            # 0.29 generates code that does not import (`Unset` undefined) for a required body with two
            # content types (its issue #1451); clients of every other generator are unaffected either way.
            "required": False,
            "description": "required in fact: the video file (multipart field 'file') or its features (JSON)",
        }
    },
)
async def put_video(
    video_id: str, request: Request, state: State, settings: SettingsDep, metrics: MetricsDep, write_lock: WriteLock
) -> VideoChanged:
    _check_id(video_id)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = VideoFeaturesIn.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise HTTPException(422, f"{where}: {first['msg']}" if where else first["msg"]) from None
        meta = _metadata(body.metadata or {}, settings.max_metadata_bytes)
        try:
            frames, mask, times = features_from_json(state.catalog.manifest, body.frames, body.times)
        except BadVideo as exc:
            raise HTTPException(422, str(exc)) from None
        media = None
    elif content_type.startswith("multipart/form-data"):
        tmp, meta = await _save_upload(request, settings, state, video_id)
        try:
            frames, mask, times = await asyncio.to_thread(features_from_file, state.engine, tmp)
        except BadVideo as exc:
            tmp.unlink(missing_ok=True)
            raise HTTPException(422, str(exc)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        media = tmp
    else:
        raise HTTPException(415, "send the video as multipart/form-data (field 'file') or its features as JSON")
    async with write_lock:
        existed = video_id in state.catalog  # the catalog of now: a hot reload may have swapped it
        await asyncio.to_thread(state.catalog.put_video, video_id, frames, mask, times, meta)
    if media is not None:
        for old in state.media.upload_dir.glob(f"{video_id}.*"):
            old.unlink()  # a replacement may change the file type
        shutil.move(media, state.media.upload_path(video_id, media.suffix))
    metrics.videos.set(len(state.catalog))
    status = "replaced" if existed else "created"
    return VideoChanged(video_id=video_id, status=status, frames=int(mask.sum()), metadata=meta)


@router.patch(
    "/{video_id}",
    response_model=VideoChanged,
    responses=error_responses(401, 404, 413, 415, 422, 500, 503),
    summary="change a video's metadata (JSON merge patch: null removes a key), frames kept",
    openapi_extra={
        "requestBody": {
            # application/merge-patch+json is accepted too; declared once, so that generated clients get one body type
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
            "required": True,
            "description": "metadata fields to set; a null removes the field (RFC 7386)",
        }
    },
)
async def patch_video(
    video_id: str, request: Request, state: State, settings: SettingsDep, write_lock: WriteLock
) -> VideoChanged:
    _check_id(video_id)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/merge-patch+json"):
        raise HTTPException(415, "send the metadata patch as JSON (application/json or application/merge-patch+json)")
    try:
        patch = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(422, "the body is not valid JSON") from None
    if not isinstance(patch, dict):
        raise HTTPException(422, "the body must be a JSON object of metadata fields (null removes a field)")
    async with write_lock:
        catalog = state.catalog
        if video_id not in catalog:
            raise HTTPException(404, f"no video {video_id!r}")
        meta = _metadata(merge_patch(catalog.get_metadata([video_id])[0], patch), settings.max_metadata_bytes)
        if not await asyncio.to_thread(catalog.set_metadata, video_id, meta):
            raise HTTPException(404, f"no video {video_id!r}")
    return VideoChanged(video_id=video_id, status="updated", metadata=meta)


@router.delete(
    "/{video_id}", response_model=VideoChanged, responses=READ_ERRORS, summary="remove a video from the catalog"
)
async def delete_video(video_id: str, state: State, metrics: MetricsDep, write_lock: WriteLock) -> VideoChanged:
    _check_id(video_id)
    async with write_lock:
        deleted = await asyncio.to_thread(state.catalog.delete_video, video_id)
    if not deleted:
        raise HTTPException(404, f"no video {video_id!r}")
    for old in state.media.upload_dir.glob(f"{video_id}.*"):
        old.unlink()
    metrics.videos.set(len(state.catalog))
    return VideoChanged(video_id=video_id, status="deleted")


def _duration_s(container: Any, stream: Any) -> float | None:
    """The video's length in seconds, from the stream or the container, when either knows it."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # in AV_TIME_BASE units
    return None


def _jpeg_at(path: Path, t: float) -> bytes:
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = _duration_s(container, stream)
        if duration is not None and t > duration:
            raise HTTPException(422, f"t={t} is beyond the end of the video ({duration:.3f} s)")
        best = None
        for frame in container.decode(stream):
            best = frame
            if frame.time is not None and frame.time >= t:
                break
        if best is None:
            raise HTTPException(404, "the video file holds no frames")
        image: Image.Image = best.to_image()
    image.thumbnail((320, 320))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


@router.get(
    "/{video_id}/frame",
    summary="the frame at time t as a JPEG",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": BINARY}, "description": "the frame"}, **READ_ERRORS},
)
async def frame(
    video_id: str,
    state: State,
    t: float = Query(0.0, ge=0, allow_inf_nan=False, description="seconds from the start, within the video"),
) -> Response:
    _check_id(video_id)
    path = state.media.find(video_id)
    if path is None:
        raise HTTPException(404, f"no media file for video {video_id!r}")
    data = await asyncio.to_thread(_jpeg_at, path, t)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/{video_id}/file",
    summary="the video file, for playback",
    response_class=FileResponse,
    responses={200: {"content": {"video/mp4": BINARY}, "description": "the file (in its own type)"}, **READ_ERRORS},
)
async def video_file(video_id: str, state: State) -> FileResponse:
    _check_id(video_id)
    path = state.media.find(video_id)
    if path is None:
        raise HTTPException(404, f"no media file for video {video_id!r}")
    return FileResponse(path)
