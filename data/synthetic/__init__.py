"""The procedural puppet benchmark: cartoon characters with exact whole-body keypoints -> shards.

Every identity is a seeded random character (proportions, skin, clothes with stripes, dots or
checks, hair, a face drawn where its 68 landmarks are, hands whose 21 points are exact). Clips
animate it with dance-like motion (sums of sinusoids per joint angle, identity-specific style,
clip-specific tempo and phases), global translation and zoom, head turns, blinks, mouth and hand
open/close, in front of a static textured background. Keypoints follow the COCO-WholeBody 133
layout with confidence 1 when visible, 0.5 for head points turned away, 0.6 for fingertips
folded into a fist, 0.3 for points hidden behind the torso and 0 outside the frame. The person
mask is exact: every pixel the rendered person covers at all (2.5D layers, supersampled 2x).

Modules, in the order a sample is made: :mod:`~data.synthetic.config` (settings, seeding),
:mod:`~data.synthetic.identity` (characters), :mod:`~data.synthetic.motion` (joint angles over
time), :mod:`~data.synthetic.skeleton` (the 133 keypoints), :mod:`~data.synthetic.raster` (the
canvas), :mod:`~data.synthetic.person` (painting the character), :mod:`~data.synthetic.scene`
(backgrounds, text, clips, image pairs), :mod:`~data.synthetic.writer` (shards and manifest),
:mod:`~data.synthetic.cli` (the command line).

Layout written (``python -m data.synthetic out=DIR``, settings in conf/synthetic.yaml)::

    DIR/manifest.json
    DIR/{split}/shard-NNNNNN.tar    video clips (subset "video")
    DIR/{split}/images-NNNNNN.tar   image pairs for pose transfer (subset "images")
    DIR/{split}/long-NNNNNN.tar     long clips (subset "long", off by default)

``manifest["splits"][split]`` holds ``identities`` and, per subset, ``{"shards": [paths
relative to DIR], "samples": N}``. Splits have disjoint identities. Output is a pure function of
the config (the worker count does not change a byte of keypoints or frames).
"""

from data.synthetic.config import GENERATOR_NAME, GENERATOR_VERSION, SPLITS, SyntheticConfig
from data.synthetic.identity import Identity, identity_name, make_identity
from data.synthetic.motion import Motion, PoseParams, make_motion, pose_at
from data.synthetic.scene import frame_size, make_clip, make_image_pair, render_frame
from data.synthetic.skeleton import Skeleton, build_skeleton
from data.synthetic.writer import SUBSET_PREFIXES, ensure_dataset, generate_dataset

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "SPLITS", "SUBSET_PREFIXES", "Identity", "Motion", "PoseParams", "Skeleton",
    "SyntheticConfig", "build_skeleton", "ensure_dataset", "frame_size", "generate_dataset", "identity_name", "make_clip",
    "make_identity", "make_image_pair", "make_motion", "pose_at", "render_frame",
]
