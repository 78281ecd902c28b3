"""A run's images as the tenant gets them: in the format it asked for, stored in the blob store
under keys of the run's own, described for the settlement that records them as files."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Sequence
from uuid import UUID

from gateway.billing.settlement import StoredImage
from gateway.domain.generation import EXTENSIONS, GeneratedImage, OutputFormat
from gateway.storage.base import BlobStore
from gateway.storage.formats import needs_conversion, to_output_format


async def store_images(
    blobs: BlobStore, job_id: UUID, images: Sequence[GeneratedImage], *, output_format: OutputFormat
) -> list[StoredImage]:
    """Convert each image to `output_format` where needed and store it; raises on the first that fails."""
    # Keys of this run's own: a runner that lost its lease but finishes anyway must not
    # overwrite, or on discarding delete, the images of the runner that settled the job.
    run = secrets.token_hex(8)
    stored = []
    for image in images:
        # Engines answer in their own format; the tenant gets the one it asked for. Re-encoding
        # takes a thread; an image already in that format does not pay for the hop (~80 µs CPU).
        if needs_conversion(image.media_type, output_format):
            data, media_type = await asyncio.to_thread(to_output_format, image.data, image.media_type, output_format)
        else:
            data, media_type = image.data, image.media_type
        ext = EXTENSIONS.get(media_type, output_format)
        key = f"outputs/{job_id}/{run}-{image.index}.{ext}"
        await blobs.put(key, data, media_type)
        stored.append(
            StoredImage(
                index=image.index,
                file_id=secrets.token_urlsafe(32),
                blob_key=key,
                content_type=media_type,
                size=len(data),
                etag=hashlib.sha256(data).hexdigest()[:32],
                filename=f"{job_id}-{image.index}.{ext}",
                seed=image.seed,
            )
        )
    return stored
