"""What ``trainer.predict`` reads: the image paths its inputs stand for, and each file's bytes, bounded.

Inputs are image files (local or ``gs://``), folders and ``gs://`` prefixes
(:func:`list_images`). Each file is read with the limits the preprocessing job
gives the images it converts, so a file the job would refuse is refused here
too, as an error row, and the other images still run (:func:`read_files`):

- only a regular file is opened: a FIFO (which would block the run forever), a
  device such as ``/dev/zero`` (which never ends) or a socket is refused
  unread (:func:`contracts.storage.read_bytes`);
- a file over :data:`preprocessing.images.MAX_FILE_BYTES` is refused before it
  is read whole (a ``gs://`` object by its size, before the download);
- a header announcing more than :data:`contracts.images.MAX_PIXELS` pixels is
  refused before any pixel is decoded (the converters :mod:`trainer.predict` passes).
"""

import os

from PIL import Image

from contracts import storage


def max_file_bytes():
    """The largest image file read: the preprocessing job's :data:`preprocessing.images.MAX_FILE_BYTES`."""
    # Imported here: the module loads TensorFlow (through the record schema), which --help does without.
    from preprocessing import images

    return images.MAX_FILE_BYTES


def read_files(paths, convert):
    """Reads every file through ``convert``; returns ``({path: value}, {path: message})``.

    A file that cannot be read (missing, no regular file, too large) or converted
    (``convert`` raises ``OSError`` or ``ValueError``) gets a message and no value.
    """
    limit = max_file_bytes()
    values, failures = {}, {}
    for path in paths:
        try:
            values[path] = convert(storage.read_bytes(path, max_bytes=limit))
        except storage.UnreadableFileError as error:
            # Its message starts with the path, which the error row names already.
            failures[path] = f"cannot read image ({str(error).removeprefix(f'{path}: ')})"
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            failures[path] = f"cannot read image ({error})"
    return values, failures


def list_images(inputs, speaker):
    """Returns the image paths of ``inputs``: a file as given, a folder's images in sorted order.

    A local folder, or a ``gs://`` URI that names no object but prefixes some
    (listed through :func:`contracts.storage.list_files`), stands for every file
    below it whose name ends with an image extension, hidden and system files
    left out: the rules by which the preprocessing job lists a class-per-folder
    tree (:mod:`preprocessing.layouts`). Each folder gets one line on
    ``speaker`` saying what it held. Anything else is a file: one that cannot
    be read (a FIFO or device included) becomes an error row. Only path strings are held.

    Raises:
        ValueError: When no input is a file and the folders hold no image.
    """
    # Imported here: the module loads TensorFlow (through the record schema), which --help does without.
    from preprocessing import layouts

    paths, empty = [], []
    for item in inputs:
        files = _folder_files(item)
        if files is None:
            paths.append(item)
            continue
        root = item.rstrip("/")
        images, other, hidden = [], 0, 0
        for path in files:
            relative = path[len(root) + 1 :].replace(os.sep, "/")
            if layouts.is_hidden(relative):
                hidden += 1
            elif relative.lower().endswith(layouts.IMAGE_EXTENSIONS):
                images.append(path)
            else:
                other += 1
        left_out = [f"{other} other files (not an image extension)"] if other else []
        left_out += [f"{hidden} hidden or system files"] if hidden else []
        speaker.say(
            f"{item}: {len(images)} images" + (f"; left out {', '.join(left_out)}" if left_out else "")
        )
        empty += [] if images else [item]
        paths += images
    if not paths:
        extensions = ", ".join(layouts.IMAGE_EXTENSIONS)
        raise ValueError(f"no image files ({extensions}, any letter case) in {', '.join(empty)}")
    return paths


def _folder_files(item):
    """Every file below ``item`` when it is a folder or a ``gs://`` prefix; ``None`` for a file."""
    if not storage.is_gcs(item):
        return storage.list_files(item, recursive=True) if os.path.isdir(item) else None
    try:
        if not item.endswith("/") and storage.exists(item):
            return None
        return storage.list_files(item, recursive=True) or None
    except OSError:  # No access, no such bucket: reading it as a file gives its error row.
        return None
