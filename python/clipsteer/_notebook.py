"""``Describer.show``: the original demo's experience in a Jupyter cell. The image beside the
description as it grows, and each step's top candidates with their similarity."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    from . import Describer, ImageLike


def _thumbnail(image: Any) -> str:
    """An <img> of the input, at most 256 pixels wide, or "" for a text target."""
    if image is None:
        return ""
    from PIL import Image, ImageOps

    from . import _PNG_MODES, _convert_to_rgb, _from_array

    if isinstance(image, Image.Image):
        picture = image.copy()
    elif hasattr(image, "shape"):
        picture = _from_array(image)
    else:
        try:
            with Image.open(image) as opened:
                picture = ImageOps.exif_transpose(opened)
        except Exception:
            return ""  # the core reads more than Pillow (and has read this one): no thumbnail
    if picture.mode not in _PNG_MODES or picture.mode == "I;16":
        picture = _convert_to_rgb(picture)
    picture.thumbnail((256, 256))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" style="max-width:256px;margin-right:1em">'


def _render(thumbnail: str, event: Dict[str, Any]) -> str:
    text = html.escape(event.get("text", ""))
    rows = "".join(
        f"<tr><td><code>{html.escape(repr(c['token']))}</code></td>"
        f"<td>{c['similarity']:.4f}</td></tr>"
        for c in event.get("top", [])
    )
    if event.get("event") == "done":
        status = f"done · similarity {event['similarity']:.4f} · {event['seconds']:.1f} s"
    else:
        status = f"step {event.get('step', 0) + 1} · similarity {event.get('similarity', 0):.4f}"
    table = (
        f"<table><tr><th>top candidates</th><th>similarity</th></tr>{rows}</table>" if rows else ""
    )
    return (
        f'<div style="display:flex;align-items:flex-start">{thumbnail}'
        f'<div><p style="font-size:1.2em">{text}</p><p><small>{status}</small></p>{table}</div></div>'
    )


def show(describer: "Describer", image: Optional["ImageLike"], options: Dict[str, Any]) -> Dict[str, Any]:
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        raise RuntimeError(
            "Describer.show draws in Jupyter (IPython); use describe() or stream() elsewhere"
        )
    # Arguments are checked (and the work started) before anything is drawn.
    events = describer.stream(image, **options)
    thumbnail = _thumbnail(image)
    handle = display(HTML(_render(thumbnail, {"text": "…"})), display_id=True)
    done: Dict[str, Any] = {}
    last_top: list = []
    for event in events:
        if event.get("event") == "step":
            last_top = event.get("top", [])
        else:
            done = event
            event = dict(event, top=last_top)
        handle.update(HTML(_render(thumbnail, event)))
    return done
