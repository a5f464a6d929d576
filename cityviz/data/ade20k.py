"""The 150 ADE20K scene-parsing classes, in the order of the benchmark's label indices.

Index ``i`` here is the ``id2label[i]`` of Hugging Face ADE20K checkpoints: **0-based**, label 0
is *wall*, and the benchmark's "other" class is dropped. The synthetic data set writes these
indices into its label maps, so its annotations and a real ADE20K segmenter speak the same
vocabulary.

ADE20K's own release (SceneParsing ``ADEChallengeData2016/annotations/*.png``) is **1-based**:
0 = "other" (not one of the 150), 1..150 = wall..flag (objectInfo150.csv). Read such PNGs with
``AnnotationSegmenter(..., reduce_labels=True)`` (CLI ``--reduce-labels``), which maps 0 to
unlabelled and ``v`` to ``v - 1`` like Hugging Face's ``do_reduce_labels``; without it the value
150 is refused (see :class:`cityviz.segment.AnnotationSegmenter`).
"""

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_INDEX: dict[str, int] = {name: i for i, name in enumerate(ADE20K_CLASSES)}

assert len(ADE20K_CLASSES) == 150
