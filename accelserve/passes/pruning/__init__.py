"""Graph-level pruning of ONNX models (framework-independent: it works on the exported graph).

* :mod:`.dependency` (+ :mod:`.dependency_ops`): channel groups coupled through the graph, and why a group is kept;
* :mod:`.surgery`: physical channel removal; :mod:`.importance`: channel scores; :mod:`.reconstruct`: least-squares
  refit of the consumers on calibration data;
* passes: :mod:`.channels` (``prune-channels``), :mod:`.magnitude` (``prune-magnitude``, ``prune-2:4``);
  the low-rank pass is :mod:`accelserve.passes.lowrank`;
* :mod:`.schedule`: the accuracy-budget schedule; :mod:`.data`: calibration samples and scoring.
"""
