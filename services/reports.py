"""What a classification job's folds add up to, per class: precision, recall and F1 from
the confusion matrix summed over the test folds (every row tested once), and a picture
of that matrix."""
from __future__ import annotations

import io


def summed(confusions: list[list[list[int]]]) -> list[list[int]]:
    size = len(confusions[0])
    return [[sum(c[i][j] for c in confusions) for j in range(size)] for i in range(size)]


def class_report(classes: list, confusion: list[list[int]]) -> list[dict]:
    """Per class: its rows (support), precision, recall and F1, as scikit-learn defines them."""
    report = []
    for i, name in enumerate(classes):
        true_positive = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        actual = sum(confusion[i])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report.append({"class": name, "support": actual, "precision": precision, "recall": recall,
                       "f1": f1})
    return report


# The picture's layout, in pixels. Drawn with Pillow in milliseconds, where matplotlib
# took about half a second of the dispatcher's time at the end of every job.
CELL, MARGIN, FONT_SIZE = 40, 12, 13
LIGHT, DARK = (247, 251, 255), (8, 48, 107)  # the ends of matplotlib's "Blues"
TITLE = "confusion matrix, summed over the test folds"


def confusion_png(classes: list, confusion: list[list[int]]) -> bytes:
    """The matrix as a heat map, true classes down and predicted classes across, each
    cell's count written in it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    labels = [str(c)[:24] for c in classes]
    label_px = int(max(font.getlength(label) for label in labels)) + MARGIN
    side = CELL * len(classes)
    left, top = 2 * MARGIN + FONT_SIZE + label_px, 2 * MARGIN + FONT_SIZE
    width = max(left + side + MARGIN, int(font.getlength(TITLE)) + 2 * MARGIN)
    image = Image.new("RGB", (width, top + side + label_px + FONT_SIZE + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, MARGIN), TITLE, fill="black", font=font, anchor="mt")
    peak = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            x, y, share = left + j * CELL, top + i * CELL, count / peak
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=blend(share))
            draw.text((x + CELL // 2, y + CELL // 2), str(count), font=fitting(font, str(count)),
                      fill="white" if share > 0.5 else "black", anchor="mm")
    for k, label in enumerate(labels):  # true classes, left of their rows
        draw.text((left - MARGIN // 2, top + k * CELL + CELL // 2), label, fill="black", font=font, anchor="rm")
    # Predicted classes under their columns and the rows' title, both written upwards.
    image.paste(upwards((label_px, side), [((label_px - MARGIN // 2, k * CELL + CELL // 2), label, "rm")
                                           for k, label in enumerate(labels)], font), (left, top + side))
    image.paste(upwards((side, FONT_SIZE + 4), [((side // 2, FONT_SIZE // 2 + 2), "true class", "mm")], font),
                (MARGIN, top))
    draw.text((left + side // 2, top + side + label_px + MARGIN // 2), "predicted class", fill="black",
              font=font, anchor="mt")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blend(share: float) -> tuple[int, ...]:
    return tuple(round(a + (b - a) * share) for a, b in zip(LIGHT, DARK))


def fitting(font, text: str):
    """The font, smaller where a long count would spill out of its cell."""
    room, needed = CELL - 4, font.getlength(text)
    return font if needed <= room else font.font_variant(size=max(6, int(FONT_SIZE * room / needed)))


def upwards(size: tuple[int, int], texts: list, font):
    """`texts` ((x, y), text, anchor) drawn on a white strip of `size`, turned a quarter
    left: the strip's top becomes its left side, and the text reads upwards."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(strip)
    for xy, text, anchor in texts:
        draw.text(xy, text, fill="black", font=font, anchor=anchor)
    return strip.rotate(90, expand=True)
