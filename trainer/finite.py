"""Whether every float variable of a model and its optimizer is finite.

A run's first checks read the variables on the host (NumPy); only a run long
enough to repay it traces the check into one graph. The trace costs about as
much as :data:`HOST_CHECKS` host checks on a 2-core CPU (Minception's 370
variables: 3.4 s to trace and run first, 0.07-0.13 s per host check;
Inception-ResNet-v2's 1,879: 14 s and 0.5-0.7 s), so a short run never pays
for it and a long one pays at most about twice the cheaper choice.
"""

import numpy as np
import tensorflow as tf

HOST_CHECKS = 20


class VariableCheck:
    """Checks ``variables`` (their float ones) for NaNs and infinities.

    Args:
        variables: The model's and the optimizer's variables, read at each check.
    """

    def __init__(self, variables):
        self.variables = [v for v in variables if "float" in str(v.dtype)]
        self.checks = 0
        self._traced = None

    def any_non_finite(self):
        """Returns a float32 scalar tensor: 1.0 when a variable holds a NaN or an infinity, else 0.0."""
        self.checks += 1
        if self.checks <= HOST_CHECKS:
            return tf.constant(float(bool(self.non_finite_paths(first_only=True))))
        if self._traced is None:
            self._traced = tf.function(self._graph_any_non_finite, autograph=False)
        return self._traced()

    def non_finite_paths(self, first_only=False):
        """The paths of the variables holding a NaN or an infinity (the first one only), read on the host."""
        bad = []
        for variable in self.variables:
            if not np.isfinite(variable.numpy()).all():
                bad.append(variable.path)
                if first_only:
                    break
        return bad

    def _graph_any_non_finite(self):
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.variables])
        return tf.cast(tf.logical_not(finite), tf.float32)
