"""Class-name lists of the datasets the official CSRA models were trained on."""

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]

# COCO 2014/2017 category names in category-id order (the official preparation's order).
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]

# WIDER-Attribute's 14 attributes, in the order of its annotation files.
WIDER_CLASSES = [
    "male", "longHair", "sunglass", "hat", "tshirt", "longSleeve", "formal", "shorts", "jeans",
    "longPants", "skirt", "faceMask", "logo", "stripe",
]

CLASS_SETS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES, "wider": WIDER_CLASSES}


def resolve_classes(spec: str | list[str] | None, num_classes: int | None = None) -> list[str]:
    """Class names from a known set name ('voc', 'coco', 'wider'), a comma list, a text file
    with one name per line, or a list. With nothing given, numbered names ('class_0', ...)."""
    from pathlib import Path

    if spec is None:
        if num_classes is None:
            raise ValueError("classes are unknown: pass --classes voc|coco|wider|a,b,c|FILE")
        return [f"class_{i}" for i in range(num_classes)]
    if isinstance(spec, (list, tuple)):
        names = [str(n) for n in spec]
    elif spec.lower() in CLASS_SETS:
        names = list(CLASS_SETS[spec.lower()])
    elif Path(spec).is_file():
        names = [ln.strip() for ln in Path(spec).read_text().splitlines() if ln.strip()]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"the checkpoint has {num_classes} classes but {len(names)} class names were given")
    return names

# COCO names that differ from VOC's for the same category (the other VOC classes share their name).
COCO_TO_VOC = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
               "potted plant": "pottedplant", "dining table": "diningtable", "tv": "tvmonitor"}
BUILTIN_CLASS_MAPS = {"coco-to-voc": COCO_TO_VOC, "voc-to-coco": {v: k for k, v in COCO_TO_VOC.items()}}
