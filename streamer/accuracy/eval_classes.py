"""Which model class is which category of the user's annotation file (`yolostream eval`).

A user's labels rarely hold all of the model's classes: a person-only or person-and-car file evaluated
with an 80-class COCO model is the common case. So:

- categories are matched to the model's class names (``model.class_names``, COCO's 80 by default) by
  name, case-insensitively and ignoring surrounding blanks;
- ``--class-map MODEL=FILE`` pairs a model class with a category of another name (``car=vehicle``);
  explicit pairs come first, the other classes are still matched by name;
- detections of model classes that the file does not have are left out (*ignored classes*), after NMS,
  so the evaluated classes' detections are exactly those a full file would score;
- categories of the file that no model class matches are not evaluated (*not evaluated*), and said so.

Errors, each naming the names involved: no category matches any model class; two model classes (or two
categories) with one name; a ``--class-map`` entry that names an unknown class or category, or maps two
model classes to one category.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamer.errors import YolostreamError

__all__ = ["ClassMapError", "ClassMapping", "class_mapping", "parse_class_map"]

log = logging.getLogger(__name__)


class ClassMapError(YolostreamError, ValueError):
    """The model's classes cannot be paired with the annotation file's categories."""


@dataclass(frozen=True)
class ClassMapping:
    """The pairing of model classes with annotation categories."""

    category_of: dict[int, int]
    """Model class id → annotation category id, for the evaluated classes only."""
    class_names: tuple[str, ...]
    """The model's class names (by class id)."""
    category_names: dict[int, str]
    """Category id → name, as the file writes them."""
    ignored: tuple[str, ...]
    """Model classes the file has no category for: their detections are left out."""
    not_evaluated: tuple[str, ...]
    """Categories of the file that no model class matches: not scored."""

    @property
    def evaluated(self) -> list[tuple[int, int]]:
        """(model class id, category id) pairs, in class id order."""
        return sorted(self.category_of.items())


def _key(name: str) -> str:
    return name.strip().casefold()


def parse_class_map(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``["car=vehicle", ...]`` → ``[("car", "vehicle"), ...]``."""
    pairs = []
    for entry in entries:
        model, sep, file = entry.partition("=")
        if not sep or not model.strip() or not file.strip():
            raise ClassMapError(f"--class-map {entry!r}: write MODEL_CLASS=FILE_CATEGORY, e.g. car=vehicle")
        pairs.append((model.strip(), file.strip()))
    return pairs


def _unique(names: Sequence[str], what: str) -> dict[str, int]:
    """name key → index; an error when two names are the same but for case and blanks."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = _key(name)
        if key in seen:
            raise ClassMapError(
                f"{what} {names[seen[key]]!r} and {name!r} have the same name (compared case-insensitively): "
                "rename one, or pair classes explicitly with --class-map"
            )
        seen[key] = i
    return seen


def class_mapping(
    class_names: Sequence[str],
    categories: Sequence[dict[str, Any]],
    class_map: Sequence[tuple[str, str]] = (),
    *,
    source: str = "the annotation file",
) -> ClassMapping:
    """Pair `class_names` (by class id) with `categories` (COCO ``{"id", "name"}``); see the module docstring.

    Raises:
        ClassMapError: nothing matches, a name is ambiguous, or a `class_map` entry is wrong.
    """
    cat_names = {int(c["id"]): str(c["name"]) for c in categories}
    cat_ids = list(cat_names)
    _unique(list(cat_names.values()), f"categories of {source}")
    cat_by_key = {_key(name): cid for cid, name in cat_names.items()}
    class_by_key = _unique(class_names, "model classes")
    category_of: dict[int, int] = {}
    for model_name, file_name in class_map:
        cls = class_by_key.get(_key(model_name))
        if cls is None:
            raise ClassMapError(
                f"--class-map {model_name}={file_name}: the model has no class {model_name!r}"
            )
        cat = cat_by_key.get(_key(file_name))
        if cat is None:
            known = ", ".join(repr(n) for n in cat_names.values())
            raise ClassMapError(
                f"--class-map {model_name}={file_name}: {source} has no category {file_name!r} "
                f"(it has {known})"
            )
        if cls in category_of and category_of[cls] != cat:
            raise ClassMapError(f"--class-map maps the model class {model_name!r} twice")
        category_of[cls] = cat
    for cls, name in enumerate(class_names):
        if cls not in category_of and (cat := cat_by_key.get(_key(name))) is not None:
            category_of[cls] = cat
    owners: dict[int, int] = {}
    for cls, cat in sorted(category_of.items()):
        if cat in owners:
            raise ClassMapError(
                f"the model classes {class_names[owners[cat]]!r} and {class_names[cls]!r} both map to the "
                f"category {cat_names[cat]!r} of {source}: one model class per category"
            )
        owners[cat] = cls
    if not category_of:
        some = ", ".join(repr(n) for n in list(cat_names.values())[:5])
        raise ClassMapError(
            f"no category of {source} ({some}) is named like any of the model's {len(class_names)} classes "
            f"({', '.join(repr(n) for n in class_names[:5])}, ...): pair them with --class-map MODEL=FILE "
            "or set model.class_names to the names the model was trained with"
        )
    ignored = tuple(n for i, n in enumerate(class_names) if i not in category_of)
    not_evaluated = tuple(cat_names[c] for c in cat_ids if c not in owners)
    if not_evaluated:
        log.warning(
            "categories of %s that no model class matches are not evaluated: %s",
            source, ", ".join(not_evaluated),
        )  # fmt: skip
    return ClassMapping(category_of, tuple(class_names), cat_names, ignored, not_evaluated)
