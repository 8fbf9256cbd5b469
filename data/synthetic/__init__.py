"""The procedural puppet benchmark: cartoon characters with exact whole-body keypoints -> shards.

Every sample (a video clip, an image pair, a long clip) has its own freshly drawn identity: a
seeded character from independent factors (proportions, skin, hair style and colour, top with
sleeves, bottoms, shoes, clothing colours and pattern, motion style). Identities at test time are
never seen in training, and held-out splits are new *combinations*: clothing colours fall in hue
bands, and val/test identities wear (top band, bottom band) cells no training identity wears,
while every band is worn in training (``manifest["identity_split"]`` states the scheme).
Appearance comes only from the reference, motion only from the pose.

Two styles, one key (``style``), the same people and motions in both:

- ``flat`` (default, for the tiny 4x VAE and 16-pixel DiT tokens): plain clothing colours or a
  low-frequency pattern (a wide band, a two-tone split), a face of two eye dots and a mouth, no
  outlines, static smooth backgrounds (gradient, large soft blobs, maybe a floor), no text.
- ``textured`` (GPU runs): stripes, dots and checks, tiled, striped or noisy backgrounds with
  pixel noise, detailed faces (eyes, brows, nose, lips) and outlined parts, text on a quarter of
  the clips.

The camera is close: at the default 128 px the person covers on average more than a fifth of a
frame's 16 x 16 tokens and spans more than 6 of them in height (:mod:`~data.synthetic.measure`),
frames are mostly portrait or square, and the feet may leave the frame. Clips animate the
character with dance-like motion (sums of sinusoids per joint angle, identity-specific style,
clip-specific tempo and phases), global translation and zoom, head turns, blinks, mouth and hand
open/close. Keypoints follow the COCO-WholeBody 133 layout with confidence 1 when visible, 0.5 for
head points turned away, 0.6 for fingertips folded into a fist, 0.3 for points hidden behind the
torso and 0 outside the frame. The person mask is exact: every pixel the rendered person covers at
all (2.5D layers, supersampled 2x).

Modules, in the order a sample is made: :mod:`~data.synthetic.config` (settings, seeding),
:mod:`~data.synthetic.identity` (characters, colour cells), :mod:`~data.synthetic.motion` (joint
angles over time, framing), :mod:`~data.synthetic.skeleton` (the 133 keypoints),
:mod:`~data.synthetic.raster` (the canvas), :mod:`~data.synthetic.person` (painting the
character), :mod:`~data.synthetic.scene` (backgrounds, text, clips, image pairs),
:mod:`~data.synthetic.writer` (shards and manifest), :mod:`~data.synthetic.cli` (the command line),
:mod:`~data.synthetic.measure` (how big the person is in tokens).

Layout written (``python -m data.synthetic out=DIR [style=textured]``, settings in conf/synthetic.yaml)::

    DIR/manifest.json
    DIR/{split}/shard-NNNNNN.tar    video clips (subset "video"), 25 frames: a 17-frame window and the reference outside it
    DIR/{split}/images-NNNNNN.tar   image pairs for pose transfer (subset "images")
    DIR/{split}/long-NNNNNN.tar     long clips (subset "long", one 61 s clip per split by default)

``manifest["splits"][split]`` holds ``identities`` and, per subset, ``{"shards": [paths
relative to DIR], "samples": N}``. Sample keys name their identity (``puppet-s0-train-c00012-clip``,
``puppet-s0-test-p00003-a``). Output is a pure function of the config (the worker count does not
change a byte of keypoints or frames).
"""

from data.synthetic.config import GENERATOR_NAME, GENERATOR_VERSION, SPLITS, STYLES, SyntheticConfig
from data.synthetic.identity import HELD_OUT_CELLS, HUE_BANDS, Identity, colour_cells, hue_band, identity_name, make_identity
from data.synthetic.measure import mean_token_stats, split_token_stats, token_stats
from data.synthetic.motion import Motion, PoseParams, make_motion, pose_at
from data.synthetic.scene import frame_size, make_clip, make_image_pair, render_frame
from data.synthetic.skeleton import Skeleton, build_skeleton
from data.synthetic.writer import SUBSET_PREFIXES, ensure_dataset, generate_dataset

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "HELD_OUT_CELLS", "HUE_BANDS", "SPLITS", "STYLES", "SUBSET_PREFIXES", "Identity", "Motion",
    "PoseParams", "Skeleton", "SyntheticConfig", "build_skeleton", "colour_cells", "ensure_dataset", "frame_size", "generate_dataset",
    "hue_band", "identity_name", "make_clip", "make_identity", "make_image_pair", "make_motion", "mean_token_stats", "pose_at",
    "render_frame", "split_token_stats", "token_stats",
]
