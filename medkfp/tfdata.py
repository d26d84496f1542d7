"""tf.data settings the steps share.

Autotuning stays off for every dataset that is read to its end (validation, a one-pass
training epoch, evaluation, preprocessing's stream). With it on (TF 2.21, 2 cores), the
end of such a dataset was held up for 0.7-3.8 s in about one pass in three, after every
element had arrived: a pass of 3,200 images took 20.5 s instead of 13 s, a one-pass
training epoch of 1,300 images twice its time. Parallel maps keep their parallelism with it
off (AUTOTUNE then means one call per core); endless training streams, which never end,
keep the autotuned buffers.
"""

from __future__ import annotations

import tensorflow as tf


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning off, for a dataset that is read to its end."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
