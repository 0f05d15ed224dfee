"""What svai sees, drawn on the photo: the face square, the mesh and the procedure regions."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from svai.face import mesh
from svai.face.finder import Face

REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "eyes": (0, 170, 255),
    "nose": (255, 200, 0),
    "jaw": (255, 60, 160),
    "lips": (255, 90, 40),
    "chin": (160, 90, 255),
    "brows": (0, 220, 140),
}
SQUARE_COLOUR = (40, 255, 40)
OTHER_COLOUR = (200, 200, 200)


def overlay(rgb: np.ndarray, faces: list[Face], procedures: tuple[str, ...] = mesh.REGION_PROCEDURES) -> Image.Image:
    """The photo with every face's square (the one svai uses, the first, in green; others grey),
    the first face's mesh points and its procedure regions outlined, each in its colour."""
    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, round(max(image.size) / 400))
    for index, face in enumerate(faces):
        colour = SQUARE_COLOUR if index == 0 else OTHER_COLOUR
        draw.rectangle(face.square, outline=colour, width=line + (index == 0))
    if faces:
        face = faces[0]
        for procedure in procedures:
            if procedure not in mesh.REGION_SHAPES:
                continue
            for polygon in mesh.region_polygons(face.landmarks, procedure):
                points = [(float(x), float(y)) for x, y in polygon]
                draw.line(points + points[:1], fill=REGION_COLOURS.get(procedure, (255, 255, 255)), width=line)
        dot = max(0.6, line * 0.6)
        for x, y in face.landmarks:
            draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=(255, 255, 255))
    return image
